"""What a restart run measured: the storm's figures from the clients' records, the check of
every id against the database, the pass/fail checks and the summary (``bench.restart``)."""

from __future__ import annotations

import argparse
from collections import Counter

from .common import _r, pct


def analyse_storm(peers: list[list], t: dict[str, float]) -> dict:
    """Reconnect figures from the peers' connection records (wall times of every process).

    ``t_listen``: the earlier of the harness's first successful probe connect and the first
    TCP connect of a client to the restarted server: the server listened by then. A reconnect
    attempt dialled from then on found it listening all along.
    """
    # peer: [index, ids, conns, order_errors, dials, lost, open]; conn: [sent cursor, dial,
    # hello, replayed, replayed count, complete, TCP connected]
    post = [[c for c in p[2] if c[2] > t["t_exit"]] for p in peers]
    connects = [c[6] for conns in post for c in conns]
    t_listen = min([t["t_probe"], *connects])
    back, hellos, handshake, replay, waited, counts = [], [], [], [], [], Counter()
    not_back, incomplete, multi = 0, 0, 0
    for p, conns in zip(peers, post, strict=True):
        done = [c for c in conns if c[3] is not None]
        if not (p[6] and conns and conns[-1][3] is not None and conns[-1][5] is True):
            not_back += 1
        if any(c[5] is False for c in done):
            incomplete += 1
        if len(conns) > 1:
            multi += 1
        if done:
            back.append(done[0][3] - t_listen)
        counts[sum(c[4] or 0 for c in done)] += 1
        for c in conns:
            hellos.append(c[2])
            handshake.append(c[2] - c[1])
            waited.append(c[1] - t_listen)
            if c[3] is not None:
                replay.append(c[3] - c[2])
    closed = [min((x for x in p[5] if x >= t["t_signal"]), default=None) for p in peers]
    closed = [x - t["t_signal"] for x in closed if x is not None]
    span = max(hellos) - t_listen if hellos else None
    timeline: Counter[int] = Counter(int(h - t_listen) for h in hellos)

    def ms(values: list[float], q: float) -> float | None:
        v = pct(values, q)
        return None if v is None else _r(v * 1000, 1)

    return {
        "t_listen": t_listen,
        "down_s": _r(t_listen - t["t_signal"], 3),
        "listen_after_spawn_s": _r(t_listen - t["t_spawn"], 3),
        "close_seen_p50_ms": ms(closed, 50),
        "close_seen_max_ms": ms(closed, 100),
        "clients_saw_close": len(closed),
        "peers_back": len(peers) - not_back,
        "peers_not_back": not_back,
        "reconnect_all_s": _r(max(back), 3) if back else None,
        "reconnect_p50_s": _r(pct(back, 50), 3),
        "reconnect_p90_s": _r(pct(back, 90), 3),
        "reconnect_p99_s": _r(pct(back, 99), 3),
        "handshakes": len(hellos),
        "handshakes_per_s": _r(len(hellos) / span, 0) if span else None,
        "handshakes_peak_1s": max(timeline.values()) if timeline else 0,
        "handshakes_per_second": [timeline.get(i, 0) for i in range(max(timeline) + 1)]
        if timeline
        else [],
        "dial_to_hello_p50_ms": ms(handshake, 50),
        "dial_to_hello_p99_ms": ms(handshake, 99),
        "dial_to_hello_max_ms": ms(handshake, 100),
        "hello_to_replayed_p50_ms": ms(replay, 50),
        "hello_to_replayed_p99_ms": ms(replay, 99),
        "hello_to_replayed_max_ms": ms(replay, 100),
        "successful_dial_after_listen_p50_s": _r(pct(waited, 50), 3),
        "successful_dial_after_listen_max_s": _r(max(waited), 3) if waited else None,
        "peers_with_several_connections": multi,
        "incomplete_replays": incomplete,
        "replayed_count_per_peer": {str(k): v for k, v in sorted(counts.items())},
        "dials_per_peer_max": max((p[4] for p in peers), default=0),
        "dials_per_peer_mean": _r(sum(p[4] for p in peers) / len(peers), 2) if peers else None,
    }


def failed_attempts(answers: list[dict]) -> dict:
    """Failed reconnect attempts by error, dialled before the listen and after it (with the
    second after the listen each one was dialled in)."""
    before: Counter[str] = Counter()
    after: Counter[str] = Counter()
    seconds: dict[str, Counter[int]] = {}
    for a in answers:
        before.update(a["before"])
        after.update(a["after"])
        for name, per in a["after_per_second"].items():
            seconds.setdefault(name, Counter()).update({int(k): v for k, v in per.items()})
    return {
        "failed_before_listen": dict(before),
        "failed_before_listen_total": sum(before.values()),
        "failed_after_listen": dict(after),
        "failed_after_listen_total": sum(after.values()),
        "failed_after_listen_by_dial_second": {
            name: [per.get(i, 0) for i in range(max(per) + 1)] for name, per in seconds.items()
        },
    }


def verify(peers: list[list], expected: list[int], emitted: dict) -> dict:
    """Per client: the ids received (with repeats) against the committed ids."""
    want = set(expected)
    phase = {i: name for name, ids in emitted.items() for i in ids}
    lost_by_phase: Counter[str] = Counter()
    lost = dup = extra = order = 0
    peers_lost = peers_dup = 0
    examples: list[dict] = []
    for p in peers:
        got = Counter(p[1])
        missing = [i for i in expected if i not in got]
        twice = sum(c - 1 for c in got.values() if c > 1)
        unknown = [i for i in got if i not in want]
        lost += len(missing)
        dup += twice
        extra += len(unknown)
        order += p[3]
        peers_lost += bool(missing)
        peers_dup += bool(twice)
        for i in missing:
            lost_by_phase[phase.get(i, "other")] += 1
        if (missing or twice or unknown or p[3]) and len(examples) < 10:
            examples.append(
                {"peer": p[0], "missing": missing[:20], "ids": p[1][:60], "conns": p[2][:5]}
            )
    all_emitted = sorted(i for ids in emitted.values() for i in ids)
    return {
        "committed": len(expected),
        "emitted_equals_committed": all_emitted == expected,
        "expected_deliveries": len(expected) * len(peers),
        "received_deliveries": sum(len(p[1]) for p in peers),
        "lost": lost,
        "peers_with_loss": peers_lost,
        "lost_by_phase": dict(lost_by_phase),
        "duplicated": dup,
        "peers_with_duplicates": peers_dup,
        "unexpected_ids": extra,
        "order_errors": order,
        "examples": examples,
    }


def restart_checks(result: dict, args: argparse.Namespace) -> dict[str, bool]:
    """The run passes when every one of these holds."""
    storm, ver, conn = result.get("storm", {}), result.get("verify", {}), result.get("connect", {})
    return {
        "all_connected": conn.get("connected") == args.clients,
        "all_reconnected": result["status"] == "ok"
        and storm.get("peers_back")
        == (storm.get("peers_that_lost_a_socket") if args.failover else args.clients)
        and storm.get("peers_not_back") == 0,
        "zero_failed_after_listen": storm.get("failed_after_listen_total") == 0,
        "zero_lost": ver.get("lost") == 0,
        "zero_duplicated": ver.get("duplicated") == 0,
        "no_unexpected_ids": ver.get("unexpected_ids") == 0,
        "ids_increase_per_connection": ver.get("order_errors") == 0,
    }


def restart_summary(result: dict, args: argparse.Namespace) -> str:
    """The few lines printed at the end of a run."""
    storm, ver, conn = result.get("storm", {}), result.get("verify", {}), result.get("connect", {})
    checks = result["checks"]
    how = result.get("stop", {}).get("signal", "-")
    logged = (result.get("server_log_counts") or [{}, {}])[-1]
    return (
        f"\n{result['server']} N={args.clients}, {how}, {args.missed} missed: "
        f"status {result['status']}\n"
        f"  first connect: {conn.get('connected')}/{args.clients} at "
        f"{conn.get('handshakes_per_s')}/s\n"
        + (
            f"  failover: pid {result.get('stopped_pid')} of {args.processes} stopped, "
            f"{storm.get('peers_that_lost_a_socket')} clients moved to the others\n"
            if args.failover
            else ""
        )
        + f"  down {storm.get('down_s')} s; all {storm.get('peers_back')} back (replayed) "
        f"{storm.get('reconnect_all_s')} s after listening (p50 {storm.get('reconnect_p50_s')}, "
        f"p99 {storm.get('reconnect_p99_s')})\n"
        f"  handshakes {storm.get('handshakes')} at {storm.get('handshakes_per_s')}/s "
        f"(peak {storm.get('handshakes_peak_1s')} in one second); dial->hello p50 "
        f"{storm.get('dial_to_hello_p50_ms')} ms, p99 {storm.get('dial_to_hello_p99_ms')} ms; "
        f"hello->replayed p99 {storm.get('hello_to_replayed_p99_ms')} ms\n"
        + ("  the other processes: " if args.failover else "  restarted server: ")
        + f"{logged.get('ws.connect', 0)} handshakes accepted, "
        f"{logged.get('ws.error', 0)} sockets failed (ws.error), "
        f"{result.get('storm_server_cpu_s')} s CPU over the storm; other processes "
        f"{result.get('storm_load', {}).get('foreign_cpu_pct')}% of a core; TCP (machine-wide) "
        f"{result.get('storm_tcp_counters')}\n"
        f"  failed attempts after listening: {storm.get('failed_after_listen_total')} "
        f"{storm.get('failed_after_listen') or ''}; refused while down: "
        f"{storm.get('failed_before_listen_total')}\n"
        f"  ids: {ver.get('committed')} committed, {ver.get('received_deliveries')}/"
        f"{ver.get('expected_deliveries')} deliveries; lost {ver.get('lost')}, duplicated "
        f"{ver.get('duplicated')}, unexpected {ver.get('unexpected_ids')}, out of order "
        f"{ver.get('order_errors')}; replayed per client {storm.get('replayed_count_per_peer')}\n"
        f"  {'PASS' if result['passed'] else 'FAIL'}: "
        + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in checks.items())
    )
