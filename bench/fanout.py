"""The fan-out scenario: one server kind at one size (``Case``), and every kind at one size
(``run_size``), with the summary of each case."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from typing import Any

from .common import (
    PY,
    ClientPool,
    LoadMeter,
    _children,
    _r,
    _threads,
    flush_redis,
    log,
    pct,
    settle,
    start_profiler,
    stop_profiler,
)
from .servers import (
    ServerGroup,
    command,
)

# One case: one server kind at one size ------------------------------------------------------


class Case:
    """One server kind at one size: its server, clients, emitter and measurements."""

    def __init__(self, kind: str, n: int, args: argparse.Namespace, ctx: dict) -> None:
        self.kind, self.n, self.args, self.ctx = kind, n, args, ctx
        self.case: dict[str, Any] = {"kind": kind, "n": n, "status": "ok"}
        self.channel = f"bench.bare.{os.getpid()}.{kind}"
        self.group = f"bench.stock.{n}.{os.getpid()}"
        if kind == "ours-longpoll":
            # The project's settings plus /longpoll/ (bench/servers/longpoll_settings.py).
            env = {
                **ctx["project_env"],
                "DJANGO_SETTINGS_MODULE": "bench.servers.longpoll_settings",
            }
            if args.longpoll_whitenoise:
                env["BENCH_LONGPOLL_WHITENOISE"] = "1"
        elif kind.startswith("ours"):
            env = ctx["project_env"]
        elif kind == "stock":
            env = {
                **ctx["project_env"],
                "DJANGO_SETTINGS_MODULE": "bench.servers.stock_settings",
                "BENCH_GROUP": self.group,
            }
        else:
            env = {}
        self.server = ServerGroup(
            kind,
            env=env,
            redis_url=args.redis_url,
            log_dir=ctx["tmp"],
            channel=self.channel,
            ping_interval=args.ping_interval,
            cwd=ctx["src"],
        )
        self.clients: ClientPool | None = None
        self.emitter: Any = None
        self.emits: list[dict] = []
        self.idle_rate = 0.0
        self.profiler: Any = None
        self.timeout = args.stock_timeout if kind == "stock" else args.timeout
        self.budget_end = 0.0
        self.phase0 = (0.0, 0.0)
        self.active = False

    @property
    def name(self) -> str:
        return f"{self.kind} n={self.n}"

    def fail(self, status: str, exc: BaseException | None = None) -> None:
        self.case["status"] = status
        self.active = False
        if exc is not None:
            self.case["error"] = f"{type(exc).__name__}: {exc}"
            log(f"{self.name}: ERROR {self.case['error']}")
        self.case["server_log_tail"] = self.server.output()

    async def start_server(self) -> None:
        _children.append(self.server)
        self.server.start()
        self.case["server_pids"] = self.server.pids
        self.case["server_command"] = " ".join(
            command(
                self.kind,
                self.server.ports[0],
                redis_url=self.args.redis_url,
                channel=self.channel,
                ping_interval=self.args.ping_interval,
            )
        ).replace(PY, "python")
        await asyncio.sleep(1.0)
        self.rss0 = self.server.rss()

    async def connect(self) -> bool:
        """Open the N sockets; measure the ramp, RSS per idle connection and idle CPU."""
        args, n, case = self.args, self.n, self.case
        self.clients = clients = ClientPool(
            self.server.urls,
            n,
            args.per_process,
            log_dir=self.ctx["tmp"],
            spread_sources=n > args.spread_above,
            concurrency=args.concurrency,
            cwd=self.ctx["src"],
            module="bench.longpoll_clients" if self.kind == "ours-longpoll" else "bench.clients",
        )
        await clients.start()
        case["client_processes"] = len(clients.procs)
        log(
            f"{self.name}: server pid {','.join(map(str, self.server.pids))}, "
            f"{len(clients.procs)} client process(es); connecting"
        )
        connected = await clients.connect(timeout=60 + n / 100)
        ready = [r for r in clients.ready if r]
        opened = clients.open
        failures = sum(r["failures"] for r in ready) + (n - sum(r["n"] for r in ready))
        errors: dict[str, int] = {}
        for r in ready:
            for key, count in r["errors"].items():
                errors[key] = errors.get(key, 0) + count
        ramp = (max(r["end"] for r in ready) - min(r["start"] for r in ready)) if ready else 0
        case.update(
            connected=opened,
            failures=failures,
            retries=sum(r["retries"] for r in ready),
            handshake_errors=errors,
            ramp_s=_r(ramp, 3),
            handshakes_per_s=_r(opened / ramp if ramp > 0 else None, 0),
        )
        log(
            f"{self.name}: {opened}/{n} connected in {ramp:.2f}s "
            f"({case['handshakes_per_s']}/s), {failures} failed, {case['retries']} retries"
            + (f" {errors}" if errors else "")
        )
        if not connected or opened == 0:
            self.fail("connect-failed")
            return False
        # Profile from here on (--py-spy): attaching takes a moment and must not change the
        # pause between the ramp and the first notification.
        self.profiler = start_profiler(self.args, self.kind, self.n, self.server.pids[0])
        await asyncio.sleep(1.0)
        if self.kind == "ours-longpoll":
            # A long-poll client is ready once its first poll is sent; the server may still be
            # working through those polls (a thread and a query each): wait until it is quiet,
            # or the idle rate would be its backlog.
            case["settle_s"] = await settle(self.server)
        cpu_a, m_a = self.server.cpu(), time.monotonic()
        await asyncio.sleep(args.idle_seconds)
        self.idle_rate = (self.server.cpu() - cpu_a) / (time.monotonic() - m_a)
        rss1 = self.server.rss()
        case.update(
            server_threads=_threads(self.server.pids),
            rss_before_mib=_r(self.rss0 / 2**20),
            rss_after_mib=_r(rss1 / 2**20),
            rss_per_conn_kib=_r((rss1 - self.rss0) / opened / 1024),
            idle_cpu_pct=_r(self.idle_rate * 100),
        )
        log(
            f"{self.name}: RSS {self.rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB "
            f"= {case['rss_per_conn_kib']} KiB/conn; idle CPU {self.idle_rate * 100:.1f}%"
        )
        from .emitters import BareEmitter, OursEmitter, PushEmitter, StockEmitter

        if self.kind.endswith("-push"):
            self.emitter = PushEmitter()
        elif self.kind.startswith("ours"):
            self.emitter = OursEmitter()
        elif self.kind == "stock":
            self.emitter = StockEmitter(args.redis_url, self.group)
        else:
            self.emitter = BareEmitter(args.redis_url, self.channel)
        self.active = True
        return True

    def begin(self) -> None:
        self.budget_end = time.monotonic() + self.args.case_budget
        # Server CPU over the whole emit phase, gaps included (see finish()).
        self.phase0 = (self.server.cpu(), time.monotonic())

    async def emit_one(self, seq: int) -> None:
        """Emit notification ``seq`` and wait until every client has it (or the timeout)."""
        assert self.clients is not None
        server, clients, args = self.server, self.clients, self.args
        cpu0, ccpu0, m0 = server.cpu(), clients.cpu(), time.monotonic()
        event_id, t = await self.emitter.emit(seq)
        emit_s = time.time() - t
        ok = await clients.wait_done(event_id, self.timeout)
        m1 = time.monotonic()
        cpu1, ccpu1 = server.cpu(), clients.cpu()
        self.emits.append(
            {
                "id": event_id,
                "t": t,
                "ok": ok,
                "window_s": m1 - m0,
                "emit_s": emit_s,
                "server_cpu_s": cpu1 - cpu0 - self.idle_rate * (m1 - m0),
                "client_cpu_s": ccpu1 - ccpu0,
            }
        )
        got = clients.done.get(event_id, {})
        last = max((v[1] for v in got.values()), default=None)
        shown = f"{(last - t) * 1000:.1f} ms" if ok and last else f"TIMEOUT after {self.timeout}s"
        log(
            f"{self.name}: notification {seq}/{args.count} (id {event_id}): "
            f"all {clients.open} got it in {shown}"
        )
        if not ok:
            self.fail("dnf")
        elif not server.alive():
            self.fail("server-died")
        elif time.monotonic() > self.budget_end and seq < args.count:
            log(f"{self.name}: case budget of {args.case_budget}s spent, stopping at {seq}")
            self.case["budget_stopped_at"] = seq
            self.active = False

    async def finish(self) -> dict:
        """Collect the clients' records, summarize, stop everything."""
        case = self.case
        try:
            if self.profiler is not None:
                case["profile"] = stop_profiler(self.profiler)
                self.profiler = None
            if self.clients is not None and self.emits:
                await asyncio.sleep(0.5)
                # The whole emit phase: a long-poll server handles each client's next request
                # after that client got the notification, partly after the fan-out window.
                cpu1, m1 = self.server.cpu(), time.monotonic()
                phase_cpu = cpu1 - self.phase0[0] - self.idle_rate * (m1 - self.phase0[1])
                await self.clients.dump()
                summarize(case, self.emits, self.clients, phase_cpu_s=phase_cpu)
                log(
                    f"{self.name}: fan-out p50 {case.get('fanout_p50_ms')} ms, "
                    f"p99 {case.get('fanout_p99_ms')} ms; server CPU "
                    f"{case.get('server_cpu_us_per_delivery')} us/delivery; latency p50 "
                    f"{case.get('latency_p50_ms')} p99 {case.get('latency_p99_ms')} ms"
                )
        except Exception as exc:
            self.fail("error", exc)
        finally:
            await self.stop()
        return case

    async def stop(self) -> None:
        if self.profiler is not None:
            stop_profiler(self.profiler)
            self.profiler = None
        if self.emitter is not None:
            with contextlib.suppress(Exception):
                await self.emitter.close()
            self.emitter = None
        if self.clients is not None:
            await self.clients.stop()
        self.server.stop()
        if self.server in _children:
            _children.remove(self.server)


async def run_size(n: int, kinds: list[str], args: argparse.Namespace, ctx: dict) -> list[dict]:
    """All kinds at one N.

    Unless ``--sequential``, each kind of ours runs paired with its own bare server: both
    connected at once, their notifications alternating (bare's 1st, ours' 1st, ours' 2nd,
    bare's 2nd, ...), so that a burst of someone else's load on the machine hits both alike
    and every ratio compares two measurements taken in the same seconds. Two kinds of ours
    are never up together: they would share the database and the Redis group, and each
    notification would be fanned out by both. Stock Channels runs alone (seconds a
    notification)."""
    ours = [k for k in kinds if k.startswith("ours")]
    if args.sequential or "bare" not in kinds:
        groups = [[k] for k in kinds]
    else:
        groups = [["bare", k] for k in ours] or [["bare"]]
        groups += [[k] for k in kinds if k not in ours and k != "bare"]
    results: list[dict] = []
    for group in groups:
        flush_redis(args.redis_url)
        cases = [Case(kind, n, args, ctx) for kind in group]
        for c in cases:
            if c.kind == "bare" and len(group) > 1:
                c.case["paired_with"] = next(k for k in group if k != "bare")
        try:
            for c in cases:
                try:
                    await c.start_server()
                    await c.connect()
                except Exception as exc:
                    c.fail("error", exc)
            live = [c for c in cases if c.active]
            meter = LoadMeter([c.server for c in cases], [c.clients for c in cases if c.clients])
            for c in live:
                c.begin()
            for seq in range(1, args.count + 1):
                order = [c for c in live if c.active]
                if not order:
                    break
                shift = (seq - 1) % len(order)
                for c in order[shift:] + order[:shift]:
                    try:
                        await c.emit_one(seq)
                    except Exception as exc:
                        c.fail("error", exc)
                    await asyncio.sleep(args.gap)
            load = meter.result()
            for c in cases:
                c.case.update(load, emitted_with=[x.kind for x in cases])
                results.append(await c.finish())
            log(
                f"n={n} {'+'.join(group)}: other processes on the machine used "
                f"{load['foreign_cpu_pct']}% of a core meanwhile (servers "
                f"{load['server_busy_pct']}%, clients {load['clients_busy_pct']}%)"
            )
        finally:
            for c in cases:
                await c.stop()
    return results


def summarize(
    case: dict, emits: list[dict], clients: ClientPool, *, phase_cpu_s: float | None = None
) -> None:
    merged: dict[int, dict] = {}
    for stats in clients.stats:
        if not stats:
            continue
        for key, s in stats["per_id"].items():
            m = merged.setdefault(
                int(key), {"count": 0, "first": s["first"], "last": s["last"], "lat": []}
            )
            m["count"] += s["count"]
            m["first"] = min(m["first"], s["first"])
            m["last"] = max(m["last"], s["last"])
            m["lat"].extend(s["lat_us"])
    rows, fanout, spread, first, lat = [], [], [], [], []
    cpu_s, cpu_idle_adj_deliveries, client_cpu = 0.0, 0, 0.0
    for e in emits:
        m = merged.get(e["id"])
        received = m["count"] if m else 0
        row = {
            "id": e["id"],
            "received": received,
            "ok": e["ok"],
            "emit_call_ms": _r(e["emit_s"] * 1000, 3),
            "server_cpu_ms": _r(e["server_cpu_s"] * 1000, 3),
        }
        if m:
            row.update(
                fanout_ms=_r((m["last"] - e["t"]) * 1000, 3),
                first_ms=_r((m["first"] - e["t"]) * 1000, 3),
                spread_ms=_r((m["last"] - m["first"]) * 1000, 3),
            )
            lat.extend(m["lat"])
        if e["ok"] and m:
            fanout.append(row["fanout_ms"])
            spread.append(row["spread_ms"])
            first.append(row["first_ms"])
            cpu_s += e["server_cpu_s"]
            client_cpu += e["client_cpu_s"]
            cpu_idle_adj_deliveries += received
        rows.append(row)
    lat_ms = [v / 1000 for v in lat]
    case.update(
        notifications=len(emits),
        completed=len(fanout),
        deliveries=sum(r["received"] for r in rows),
        fanout_p50_ms=_r(pct(fanout, 50)),
        fanout_p99_ms=_r(pct(fanout, 99)),
        fanout_max_ms=_r(max(fanout) if fanout else None),
        spread_p50_ms=_r(pct(spread, 50)),
        spread_p99_ms=_r(pct(spread, 99)),
        first_p50_ms=_r(pct(first, 50)),
        latency_p50_ms=_r(pct(lat_ms, 50)),
        latency_p99_ms=_r(pct(lat_ms, 99)),
        server_cpu_us_per_delivery=_r(
            cpu_s / cpu_idle_adj_deliveries * 1e6 if cpu_idle_adj_deliveries else None, 1
        ),
        client_cpu_us_per_frame=_r(
            client_cpu / cpu_idle_adj_deliveries * 1e6 if cpu_idle_adj_deliveries else None, 1
        ),
        closed_during_run=sum(s["closed_after_hello"] for s in clients.stats if s),
    )
    deliveries = case["deliveries"]
    if phase_cpu_s is not None and deliveries:
        # Every emit window and the gaps between them, idle rate subtracted: includes work
        # that follows a delivery (a long-poll client's next request).
        case["server_cpu_us_per_delivery_phase"] = _r(phase_cpu_s / deliveries * 1e6, 1)
    wire(case, [s["bytes"] for s in clients.stats if s and s.get("bytes")], merged)
    case["per_notification"] = rows


def wire(case: dict, counts: list[dict], merged: dict[int, dict]) -> None:
    """Bytes on the wire per delivered notification, counted by the clients on their sockets
    (payload written and read; TCP/IP headers and ACKs are not counted, on either path).

    WebSocket: the notification frames (frame header + payload) received; the client sends
    nothing per notification. Long-poll: the request and the whole response (status line,
    headers, body) of each exchange that delivered notifications, divided by the
    notifications delivered; empty answers (the server's timeout) are reported apart."""
    if not counts:
        return
    path = counts[0].get("path")

    def total(key: str) -> int:
        return sum(c.get(key, 0) for c in counts)

    if path == "websocket":
        frames = sum(m["count"] for m in merged.values())
        if frames:
            rx = total("notification_frames")
            case.update(
                wire_path="websocket",
                wire_bytes_per_delivery=_r(rx / frames, 1),
                wire_rx_per_delivery=_r(rx / frames, 1),
                wire_tx_per_delivery=0,
                wire_deliveries=frames,
            )
    elif path == "longpoll":
        delivered = total("delivered")
        if delivered:
            tx, rx = total("delivery_tx"), total("delivery_rx")
            case.update(
                wire_path="longpoll",
                wire_bytes_per_delivery=_r((tx + rx) / delivered, 1),
                wire_rx_per_delivery=_r(rx / delivered, 1),
                wire_tx_per_delivery=_r(tx / delivered, 1),
                wire_deliveries=delivered,
                longpoll_exchanges=total("delivery_exchanges"),
                longpoll_empty_answers=total("empty_exchanges"),
                longpoll_empty_bytes=total("empty_tx") + total("empty_rx"),
                longpoll_setup_bytes_per_client=_r(
                    (total("setup_tx") + total("setup_rx")) / max(1, case.get("connected") or 1),
                    1,
                ),
                longpoll_reconnects=total("reconnects"),
                longpoll_http_errors=total("http_errors"),
            )
