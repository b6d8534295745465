"""Restart benchmark: N clients reconnect with resume cursors after a server restart.

    .venv/bin/python -m bench.restart [--clients 10000] [--server uvicorn-sansio|uvicorn|daphne]
        [--missed 20] [--kill] [--signed-in] [--database sqlite|postgres]
        [--out bench/results/restart-latest.json]

1. Start the server as ``bench.run`` does (production settings from the environment, a fresh
   migrated SQLite database, Redis; ``bench/servers``), connect N anonymous clients (client
   processes of ``bench/clients.py`` in resume mode; ``--signed-in``: one user and database
   session each, so that every reconnect is a signed-in handshake and a per-user replay) and
   wait for every ``hello``.
2. Emit ``--live`` notifications to everyone with ``anotify`` (each after every client got the
   previous one); each client keeps the highest id it received as its cursor.
3. Stop the server (SIGTERM, or SIGKILL with ``--kill``). Each client sees its socket close and
   reconnects as ``notifications.js`` does: full-jitter exponential backoff (a random delay in
   ``[0, min(15 s, 0.5 s * 2^attempt)]``), ``?cursor=<the highest id it received>``.
4. While the server is down, emit ``--missed`` notifications: stored, their publish reaches no
   one.
5. Start the server again on the same port. Measure the time from listening until every client
   has ``replayed`` again, handshakes per second during the storm, and every failed reconnect
   attempt dialled after the server listened (HTTP errors, resets, timeouts, refusals); then
   emit ``--after`` more live notifications.
6. Compare, per client, every notification id received (duplicates counted) with the ids
   committed in the database: nothing lost, nothing twice, ids increasing on each connection.

Writes ``--out`` (JSON). Exit status 0 only when every client connected and reconnected, none of
the reconnect attempts after the restart failed, and no client lost, duplicated or reordered an
id. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .common import (
    ClientPool,
    LoadMeter,
    _children,
    _cleanup,
    _r,
    _remove_stale_temp,
    _versions,
    check_loopback,
    flush_redis,
    log,
    setup_database,
    setup_django,
    snapshot,
    start_profiler,
    stop_profiler,
)
from .restart_report import analyse_storm, failed_attempts, restart_checks, restart_summary, verify
from .servers import ServerGroup, process_cpu, project_env

SERVERS = {
    "uvicorn-sansio": "ours-uvicorn-sansio",
    "uvicorn": "ours-uvicorn",
    "daphne": "ours-daphne",
}


# Client processes: queries of the resume mode ------------------------------------------------


async def query(clients: ClientPool, command: str, timeout: float = 60) -> list[dict]:
    """Send ``command`` to every client process; return their ``stats`` answers."""
    clients.stats = [None] * len(clients.procs)
    await clients._send(command)
    if not await clients._wait(lambda: all(s is not None for s in clients.stats), timeout):
        raise RuntimeError(f"the client processes did not answer {command.split()[0]!r}")
    kind = command.split()[0]
    answers = [s for s in clients.stats if s is not None]
    if any(a.get("kind") != kind for a in answers):
        raise RuntimeError(f"unexpected answer to {kind!r}")
    return answers


async def progress(clients: ClientPool) -> dict:
    answers = await query(clients, "progress")
    failed: Counter[str] = Counter()
    for a in answers:
        failed.update(a["dial_failures"])
    return {
        "open": sum(a["open"] for a in answers),
        "resumed": sum(a["resumed"] for a in answers),
        "lost": sum(a["lost"] for a in answers),
        "lost_resumed": sum(a["lost_resumed"] for a in answers),
        "dials": sum(a["dials"] for a in answers),
        "failed": dict(failed),
    }


# Server ----------------------------------------------------------------------------------------


def stop_server(server: ServerGroup, kill: bool) -> bool:
    """SIGTERM (graceful, up to 60 s, then SIGKILL) or SIGKILL; True if it had to be killed."""
    forced = False
    for proc in server.processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    for proc in server.processes:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            forced = True
            proc.kill()
            proc.wait(10)
    if server in _children:
        _children.remove(server)
    return forced


def stop_one(proc: subprocess.Popen, kill: bool) -> bool:
    """Stop one process of a group (``--failover``); True if it had to be killed."""
    proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        proc.wait(60)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return True


def log_problems(server: ServerGroup) -> dict[str, int]:
    """Warnings, errors and tracebacks in a server's log, by their first words; and the
    app's ``ws.connect`` (accepted), ``ws.error`` (failed, e.g. the client had gone) and
    ``ws.reject`` lines."""
    found: Counter[str] = Counter()
    for path in server.logs:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            for event in (" ws.connect ", " ws.error ", " ws.reject "):
                if event in line:
                    found[event.strip()] += 1
            for level in (" WARNING ", " ERROR ", " CRITICAL "):
                if level in line:
                    found[level.strip() + " " + line.split(level, 1)[1][:80]] += 1
            if line.startswith("Traceback"):
                found["Traceback"] += 1
    return dict(found)


TCP_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TCPTimeouts", "TCPAbortOnData")


def tcp_counters() -> dict[str, int]:
    """Machine-wide TCP counters (``/proc/net/netstat``; other processes' sockets included):
    accept-queue overflows and the SYN retransmissions they cause."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            row = dict(zip(head.split()[1:], values.split()[1:], strict=False))
            return {k: int(row[k]) for k in TCP_COUNTERS if k in row}
    return {}


def committed_ids(after: int) -> list[int]:
    from notifications.models import Event

    return list(Event.objects.filter(id__gt=after).order_by("id").values_list("id", flat=True))


def newest_id() -> int:
    from django.db.models import Max

    from notifications.models import Event

    return Event.objects.aggregate(m=Max("id"))["m"] or 0


# The scenario ----------------------------------------------------------------------------------


async def scenario(args: argparse.Namespace, ctx: dict) -> dict:
    from asgiref.sync import sync_to_async

    from .emitters import OursEmitter

    kind, n = SERVERS[args.server], args.clients
    if args.failover:
        kind += f"-{args.processes}p"  # processes sharing Redis and the database
    out: dict[str, Any] = {"server": kind, "n": n, "status": "ok"}
    flush_redis(args.redis_url)
    base_id = await sync_to_async(newest_id)()
    servers: list[ServerGroup] = []

    def server_group(name: str) -> ServerGroup:
        log_dir = ctx["tmp"] / name
        log_dir.mkdir()
        group = ServerGroup(
            kind,
            env=ctx["project_env"],
            redis_url=args.redis_url,
            log_dir=log_dir,
            ping_interval=args.ping_interval,
            cwd=ctx["src"],
        )
        servers.append(group)
        _children.append(group)
        return group

    emitter = OursEmitter()
    emitted: dict[str, list[int]] = {"live": [], "missed": [], "after": []}
    clients: ClientPool | None = None
    profiler = None
    try:
        # 1. Server and N clients ---------------------------------------------------------
        first = server_group("first")
        await asyncio.to_thread(first.start)
        port = first.ports[0]
        out["first_pid"] = first.pids[0]
        cookies = None
        if args.signed_in:
            # One user and one session per client, as bench.steady makes them; a client
            # reconnects with its own cookie.
            from .steady import make_users

            cookies = ctx["tmp"] / "cookies"
            probe = ClientPool(["ws://127.0.0.1:1/"], n, args.per_process, log_dir=ctx["tmp"])
            await sync_to_async(make_users)(n, cookies, probe.sizes)
            out["signed_in"] = True
        clients = ClientPool(
            first.urls,
            n,
            args.per_process,
            log_dir=ctx["tmp"],
            cookies=cookies,
            spread_sources=n > args.spread_above,
            concurrency=args.concurrency,
            cwd=ctx["src"],
        )
        await clients.start()
        resume = {
            "base": args.backoff_base,
            "cap": args.backoff_cap,
            "stable": args.stable_after,
            "timeout": args.connect_timeout,
            "failover": args.failover,
        }
        await clients._send("resume " + json.dumps(resume))
        log(
            f"{kind} pid {first.pids[0]} on port {port}; {len(clients.procs)} client processes; "
            f"connecting {n}"
        )
        await clients.connect(timeout=60 + n / 100)
        ready = [r for r in clients.ready if r]
        ramp = max(r["end"] for r in ready) - min(r["start"] for r in ready) if ready else 0
        connected = clients.open
        out["connect"] = {
            "connected": connected,
            "failures": sum(r["failures"] for r in ready) + (n - sum(r["n"] for r in ready)),
            "retries": sum(r["retries"] for r in ready),
            "ramp_s": _r(ramp, 3),
            "handshakes_per_s": _r(connected / ramp if ramp > 0 else None, 0),
        }
        log(f"{connected}/{n} connected in {ramp:.2f}s ({out['connect']['handshakes_per_s']}/s)")
        if connected != n:
            out["status"] = "connect-failed"
            return out

        # 2. Live notifications -----------------------------------------------------------
        await asyncio.sleep(1.0)
        if not await emit_live(emitter, clients, args, args.live, emitted["live"], "live"):
            out["status"] = "live-timeout"
            return out

        # 3. Stop the server --------------------------------------------------------------
        how = "SIGKILL" if args.kill else "SIGTERM"
        t_signal = time.time()
        if args.failover:
            # One of the three stops; the others keep serving and take its clients.
            stopped = first.processes[0]
            survivors = first._ps[1:]
            out["stopped_pid"] = stopped.pid
            forced = await asyncio.to_thread(stop_one, stopped, args.kill)
        else:
            forced = await asyncio.to_thread(stop_server, first, args.kill)
        t_exit = time.time()
        log(
            f"server stopped with {how} in {t_exit - t_signal:.2f}s"
            + (" (did not exit within 60 s: killed)" if forced else "")
        )
        deadline = time.monotonic() + 30
        while (p := await progress(clients))["open"] > 0 and time.monotonic() < deadline:
            if args.failover:
                break  # its clients are already dialling the others
            await asyncio.sleep(0.2)
        log(
            f"{connected - p['open']}/{connected} clients saw the close; "
            f"{p['dials']} reconnect attempts so far (refused while the server is down)"
        )
        out["stop"] = {
            "signal": how,
            "exit_s": _r(t_exit - t_signal, 3),
            "forced_kill": forced,
        }

        # 4. Notifications while the server is down -----------------------------------------
        for seq in range(1, args.missed + 1):
            event_id, _ = await emitter.emit(seq)
            emitted["missed"].append(event_id)
        log(
            f"emitted {args.missed} notifications while down (ids {emitted['missed'][:1]}.."
            f"{emitted['missed'][-1:]})"
        )
        if args.down_extra > 0:
            await asyncio.sleep(args.down_extra)

        # 5. Restart on the same port (or, --failover, none: its clients resume on the other
        # processes); the reconnect storm ------------------------------------------------------
        tcp0 = tcp_counters()
        if args.failover:
            second = first
            # The others listened all along, and its clients reconnect to them as soon as the
            # drain closes their sockets, before the process has exited.
            t_spawn = t_probe = t_signal

            def storm_cpu() -> float:
                return sum(process_cpu(p) for p in survivors)

            def survivors_alive() -> bool:
                return all(p.is_running() for p in survivors)

            cpu0 = storm_cpu()
            meter = LoadMeter([], [clients])
        else:
            second = server_group("second")
            t_spawn = time.time()
            await asyncio.to_thread(second.start, 60, [port])
            t_probe = time.time()
            storm_cpu = second.cpu
            cpu0 = storm_cpu()
            meter = LoadMeter([second], [clients])
        if args.py_spy and not args.failover:
            where = argparse.Namespace(
                py_spy=args.py_spy, py_spy_idle=False, out=str(Path(args.out).parent)
            )
            profiler = start_profiler(where, "restart-" + kind, n, second.pids[0])
        log(
            f"restarted: pid {second.pids[0]} listening {t_probe - t_spawn:.2f}s after spawn; "
            f"server down {t_probe - t_signal:.2f}s in all"
        )
        deadline = time.monotonic() + args.storm_timeout
        while True:
            p = await progress(clients)
            failed = sum(p["failed"].values())
            log(
                f"  +{time.time() - t_probe:5.1f}s: {p['resumed']}/{connected} back (replayed), "
                f"{p['open']} open, {p['dials']} reconnect attempts, {failed} failed in all"
            )
            if p["resumed"] >= connected:
                break
            if args.failover and p["open"] >= connected and p["lost_resumed"] >= p["lost"] > 0:
                out["moved"] = p["lost"]
                break
            if time.monotonic() > deadline or not (
                survivors_alive() if args.failover else second.alive()
            ):
                out["status"] = "storm-timeout" if second.alive() else "server-died"
                break
            await asyncio.sleep(1.0)
        t_back = time.time()
        cpu1 = storm_cpu()
        out["storm_load"] = meter.result()
        tcp1 = tcp_counters()
        out["storm_tcp_counters"] = {k: tcp1[k] - tcp0[k] for k in tcp1 if k in tcp0}
        if profiler is not None:
            out["profile"] = stop_profiler(profiler)
            profiler = None
        out["storm_server_cpu_s"] = _r(cpu1 - cpu0, 3)
        out["server_rss_after_mib"] = _r(
            sum(p.memory_info().rss for p in survivors) / 2**20
            if args.failover
            else second.rss() / 2**20
        )

        # 6. Live notifications after the restart -------------------------------------------
        if out["status"] == "ok":
            await asyncio.sleep(1.0)
            if not await emit_live(
                emitter,
                clients,
                args,
                args.after,
                emitted["after"],
                "after restart",
                stop_early=False,
            ):
                out["status"] = "after-timeout"
        await asyncio.sleep(1.0)

        # 7. Collect and verify ---------------------------------------------------------------
        peers = [p for a in await query(clients, "peers", 120) for p in a["peers"]]
        expected = await sync_to_async(committed_ids)(base_id)
        times = dict(
            t_signal=t_signal,
            t_exit=t_signal if args.failover else t_exit,
            t_spawn=t_spawn,
            t_probe=t_probe,
            t_back=t_back,
        )
        # --failover: the storm is that of the stopped process's clients (they lost a socket).
        moved = [p for p in peers if any(x >= t_signal for x in p[5])]
        storm = analyse_storm(moved if args.failover else peers, times)
        storm["peers_that_lost_a_socket"] = len(moved)
        failures = await query(clients, f"failures {storm['t_listen']}")
        storm.update(failed_attempts(failures))
        out["storm"] = storm
        out["verify"] = verify(peers, expected, emitted)
        out["emitted"] = {k: v for k, v in emitted.items()}
        out["committed_ids"] = [expected[0], expected[-1], len(expected)] if expected else []
        return out
    except Exception as exc:
        out["status"] = "error"
        out["error"] = f"{type(exc).__name__}: {exc}"
        log(f"ERROR {out['error']}")
        return out
    finally:
        if profiler is not None:
            out["profile"] = stop_profiler(profiler)
        out["server_log_counts"] = [log_problems(s) for s in servers]
        out["server_log_tails"] = [s.output()[-3000:] for s in servers]
        if clients is not None:
            await clients.stop()
        for s in servers:
            s.stop()


async def emit_live(
    emitter: Any,
    clients: Any,
    args: argparse.Namespace,
    count: int,
    ids: list[int],
    label: str,
    *,
    stop_early: bool = True,
) -> bool:
    """Emit ``count`` notifications one at a time, each awaited at every client (at most
    ``--timeout`` s); their ids go to ``ids``. False if one timed out (then, with
    ``stop_early``, the rest are not sent)."""
    all_ok = True
    for seq in range(1, count + 1):
        event_id, t = await emitter.emit(seq)
        ids.append(event_id)
        ok = await clients.wait_done(event_id, args.timeout)
        last = max((v[1] for v in clients.done.get(event_id, {}).values()), default=t)
        log(
            f"{label} {seq}/{count} (id {event_id}): "
            + (f"all got it in {(last - t) * 1000:.1f} ms" if ok else "TIMEOUT")
        )
        all_ok = all_ok and ok
        if not ok and stop_early:
            return False
        await asyncio.sleep(args.gap)
    return all_ok


# Main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.restart", description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=10000)
    p.add_argument("--server", choices=sorted(SERVERS), default="uvicorn-sansio")
    p.add_argument("--missed", type=int, default=20, help="notifications emitted while down")
    p.add_argument("--live", type=int, default=5, help="live notifications before the restart")
    p.add_argument("--after", type=int, default=3, help="live notifications after it")
    p.add_argument("--kill", action="store_true", help="stop the server with SIGKILL")
    p.add_argument(
        "--signed-in",
        action="store_true",
        help="one signed-in user (a database session) per client instead of anonymous clients",
    )
    p.add_argument(
        "--failover",
        action="store_true",
        help="--processes server processes; stop one and do not restart it: its clients "
        "resume on the others (each reconnect attempt dials the next server)",
    )
    p.add_argument(
        "--processes",
        type=int,
        choices=[3, 4],
        default=3,
        help="with --failover (uvicorn-sansio only): how many server processes",
    )
    p.add_argument(
        "--down-extra", type=float, default=0.0, help="s to keep the server down after --missed"
    )
    p.add_argument("--out", default="bench/results/restart-latest.json")
    p.add_argument(
        "--py-spy",
        choices=["svg", "txt", "json"],
        default=None,
        help="profile the restarted server over the storm into OUT's folder/profiles/",
    )
    p.add_argument("--keep-logs", default="", help="copy the server and client logs to this folder")
    p.add_argument("--per-process", type=int, default=2500, help="sockets per client process")
    p.add_argument(
        "--concurrency", type=int, default=200, help="first-connect handshakes in flight"
    )
    p.add_argument("--spread-above", type=int, default=4000, help="bind to 127.0.0.2-9 above N")
    p.add_argument("--backoff-base", type=float, default=0.5, help="s (notifications.js: 500 ms)")
    p.add_argument("--backoff-cap", type=float, default=15.0, help="s (notifications.js: 15 s)")
    p.add_argument("--stable-after", type=float, default=10.0, help="s up before backoff resets")
    p.add_argument("--connect-timeout", type=float, default=15.0, help="s from dial to hello")
    p.add_argument("--storm-timeout", type=float, default=180.0, help="s to wait for all back")
    p.add_argument("--timeout", type=float, default=30.0, help="s to wait for one live fan-out")
    p.add_argument("--gap", type=float, default=0.2, help="s between live notifications")
    p.add_argument("--ping-interval", type=float, default=600.0)
    p.add_argument("--poll-interval", type=float, default=None)
    p.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--postgres-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    p.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/12",
        help="a Redis database this benchmark may empty (bench.run uses 13)",
    )
    args = p.parse_args(argv)
    if args.failover and args.server != "uvicorn-sansio":
        p.error("--failover runs several uvicorn-sansio processes: use --server uvicorn-sansio")
    check_loopback(args.redis_url, "--redis-url")
    if args.missed > 200:
        log("note: more than REPLAY_LIMIT (200) missed: replays will be incomplete")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    atexit.register(_cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cmdline = " ".join(["python -m bench.restart", *(sys.argv[1:] if argv is None else argv)])
    log(f"{cmdline}; {os.cpu_count()} cores")
    started = time.time()
    _remove_stale_temp()
    tmp = Path(tempfile.mkdtemp(prefix=f"notifications-bench-{os.getpid()}-"))
    drop_db = None
    try:
        src, code = snapshot(tmp)
        log(f"code under test: {code['head']}{' + uncommitted changes' if code['dirty'] else ''}")
        database_url, drop_db = setup_database(args, tmp)
        env = project_env(
            database_url=database_url, redis_url=args.redis_url, poll_interval=args.poll_interval
        )
        setup_django(env)
        import notifications

        if not notifications.__file__.startswith(str(src)):
            raise RuntimeError(f"emitter imported {notifications.__file__}, not the copy")
        result = asyncio.run(scenario(args, {"tmp": tmp, "src": src, "project_env": env}))
    finally:
        _cleanup()
        if args.keep_logs:
            for log_file in tmp.rglob("*.log"):
                dest = Path(args.keep_logs) / log_file.relative_to(tmp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(log_file, dest)
        if drop_db is not None:
            try:
                drop_db()
            except Exception as exc:
                log(f"could not drop the benchmark database: {exc}")
        shutil.rmtree(tmp, ignore_errors=True)
    import django
    import psutil

    checks = restart_checks(result, args)
    result = {
        "command": cmdline,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "passed": all(checks.values()),
        "checks": checks,
        "machine": {
            "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {
            "django": django.get_version(),
            **_versions("uvicorn", "daphne", "websockets"),
        },
        "code": code,
        "settings": {k: v for k, v in vars(args).items()},
        **result,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(restart_summary(result, args), flush=True)
    log(f"wrote {out}")
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
