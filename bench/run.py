"""Fan-out benchmark: the project's server against a bare ``websockets`` ceiling and stock Channels.

    .venv/bin/python -m bench.run [--sizes 1000,5000,10000] [--quick] [--out bench/results]

For each size N and each server kind (``--servers``), in that order so that the kinds compared
at one N run minutes apart: start the server (production-style settings from the environment,
a fresh database, Redis), start client worker processes (``bench/clients.py``, one per
``--per-process`` sockets), open N sockets and wait for every ``hello`` (handshakes per second),
read the server's RSS before and after (RSS per idle connection), measure its idle CPU rate,
then emit K notifications one at a time, each after every client got the previous one, and
record per notification the time from emit to the last client receiving it (fan-out time), the
server's CPU over that window less the idle rate, and every delivery's latency.

The long-poll baseline (``ours-longpoll`` in ``--servers``, the default): at each N of
``--longpoll-sizes`` (1000), our WebSocket server ``ours-uvicorn-sansio`` alone and then the
long-poll server alone (``bench/servers/longpoll.py``, clients ``bench/longpoll_clients.py``),
the same notifications; bytes on the wire per delivery (counted by the clients), server CPU per
delivery, fan-out p50/p99, and long-poll / WebSocket.

Writes ``OUT/latest.json``, ``OUT/latest.md`` (the tables) and ``OUT/fanout.png``. Everything
it starts is bounded in time and stopped on exit; the temporary database is removed.
See bench/README.md and docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .servers import (
    KINDS,
    ROOT,
    ServerGroup,
    command,
    die_with_parent,
    process_cpu,
    project_env,
)

PY = sys.executable
SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]
T0 = time.monotonic()
_children: list[Any] = []  # asyncio subprocesses and ServerGroups to stop on exit


def log(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {message}", flush=True)


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _r(value: float | None, digits: int = 2) -> float | None:
    if value is None:
        return None
    return round(value) if digits == 0 else round(value, digits)


# Client processes ---------------------------------------------------------------------------


class ClientPool:
    """Client worker processes (bench/clients.py, or bench/longpoll_clients.py for the
    ``ours-longpoll`` kind) and their line protocol."""

    def __init__(
        self,
        urls: list[str],
        n: int,
        per_process: int,
        *,
        log_dir: Path,
        cookies: Path | None = None,
        spread_sources: bool = False,
        concurrency: int = 200,
        max_seconds: float = 1800,
        cwd: Path = ROOT,
        module: str = "bench.clients",
    ) -> None:
        self.cwd = cwd
        self.module = module  # bench.clients (WebSocket) or bench.longpoll_clients
        self.urls = urls
        self.n = n
        procs = max(1, math.ceil(n / per_process))
        self.sizes = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        self.log_dir = log_dir
        self.cookies = cookies
        self.spread_sources = spread_sources
        self.concurrency = concurrency
        self.max_seconds = max_seconds
        self.procs: list[asyncio.subprocess.Process] = []
        self.readers: list[asyncio.Task] = []
        self.ready: list[dict | None] = []
        self.stats: list[dict | None] = []
        self.done: dict[int, dict[int, tuple[float, float]]] = {}
        self.started: list[asyncio.Future] = []
        self._changed = asyncio.Event()
        self._ps: list[Any] = []

    async def start(self, timeout: float = 30) -> None:
        import psutil

        loop = asyncio.get_running_loop()
        for i, size in enumerate(self.sizes):
            cmd = [
                PY,
                "-m",
                self.module,
                "-n",
                str(size),
                "--concurrency",
                str(self.concurrency),
                "--max-seconds",
                str(self.max_seconds),
            ]
            for url in self.urls:
                cmd += ["--url", url]
            if self.spread_sources:
                # Rotate so that each process starts on another source address.
                rotated = SOURCES[i % len(SOURCES) :] + SOURCES[: i % len(SOURCES)]
                cmd += ["--source", ",".join(rotated)]
            if self.cookies is not None:
                part = self.cookies.with_suffix(f".{i}")
                cmd += ["--cookies", str(part)]
            err = open(self.log_dir / f"client-{i}.log", "ab")  # noqa: SIM115, ASYNC230
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                cwd=self.cwd,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                limit=1 << 30,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            err.close()
            _children.append(proc)
            self.procs.append(proc)
            self._ps.append(psutil.Process(proc.pid))
            self.ready.append(None)
            self.stats.append(None)
            self.started.append(loop.create_future())
            self.readers.append(asyncio.ensure_future(self._read(i, proc)))
        await asyncio.wait_for(asyncio.gather(*self.started), timeout)

    async def _read(self, index: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            ev = msg.get("ev")
            if ev == "started":
                if not self.started[index].done():
                    self.started[index].set_result(None)
            elif ev == "ready":
                self.ready[index] = msg
            elif ev == "done":
                self.done.setdefault(msg["id"], {})[index] = (msg["first"], msg["last"])
            elif ev == "stats":
                self.stats[index] = msg
            self._changed.set()
        self._changed.set()

    async def _wait(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0 or all(p.returncode is not None for p in self.procs):
                return predicate()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    async def _send(self, command: str) -> None:
        for proc in self.procs:
            if proc.stdin is not None and proc.returncode is None:
                proc.stdin.write(command.encode() + b"\n")
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    await proc.stdin.drain()

    async def connect(self, timeout: float) -> bool:
        await self._send("connect")
        return await self._wait(lambda: all(r is not None for r in self.ready), timeout)

    async def wait_done(self, event_id: int, timeout: float) -> bool:
        return await self._wait(
            lambda: len(self.done.get(event_id, {})) == len(self.procs), timeout
        )

    async def dump(self, timeout: float = 60) -> bool:
        self.stats = [None] * len(self.procs)
        await self._send("dump")
        return await self._wait(lambda: all(s is not None for s in self.stats), timeout)

    def cpu(self) -> float:
        total = 0.0
        for p in self._ps:
            with contextlib.suppress(Exception):
                total += process_cpu(p)
        return total

    @property
    def open(self) -> int:
        return sum(r["open"] for r in self.ready if r)

    async def stop(self) -> None:
        await self._send("quit")
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self.readers:
            task.cancel()


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


async def run_longpoll(n: int, args: argparse.Namespace, ctx: dict, done: list[dict]) -> list[dict]:
    """The long-polling baseline at N: our WebSocket server (``ours-uvicorn-sansio``) alone,
    then the long-poll server (``ours-longpoll``) alone, the same N and notifications.

    They cannot run at once: both hear every ``notify()`` (the shared database and Redis
    group), so each would deliver the other's notifications. An ``ours-uvicorn-sansio`` case
    at this N that already ran alone in this run (``--servers`` without ``bare``, or
    ``--sequential``) is the WebSocket side; otherwise one runs here, right before. Both get
    ``longpoll_pair``; the cases run here also ``mode: longpoll`` (kept out of the fan-out
    tables, which compare against bare)."""
    pair = f"n={n}"
    ws = next(
        (
            c
            for c in reversed(done)
            if c["kind"] == "ours-uvicorn-sansio"
            and c["n"] == n
            and c.get("mode") is None
            and c.get("status") == "ok"
            and c.get("emitted_with") == ["ours-uvicorn-sansio"]
            and c.get("wire_bytes_per_delivery")
        ),
        None,
    )
    kinds = ["ours-longpoll"]
    if ws is not None:
        ws["longpoll_pair"] = pair
        log(f"long-poll n={n}: WebSocket side = the ours-uvicorn-sansio case that ran alone")
    else:
        kinds.insert(0, "ours-uvicorn-sansio")
    out: list[dict] = []
    for kind in kinds:
        for case in await run_size(n, [kind], args, ctx):
            case.update(mode="longpoll", longpoll_pair=pair)
            out.append(case)
    lp = longpoll_rows([*done, *out]).get(pair)
    if lp and lp.get("ratio"):
        r = lp["ratio"]
        log(
            f"long-poll n={n} vs WebSocket: bytes/delivery {r.get('bytes_per_delivery')}x, "
            f"server CPU/delivery {r.get('cpu_phase')}x (whole phase), "
            f"fan-out p50 {r.get('fanout_p50')}x, p99 {r.get('fanout_p99')}x"
        )
    return out


class LoadMeter:
    """How busy the machine was, and with what, between creation and ``result()``.

    ``foreign_cpu_pct``: CPU used by processes that are not this benchmark's (servers,
    clients, this emitter), in percent of one core. The machine may be shared; a high figure
    means the case was measured under someone else's load.
    """

    def __init__(self, servers: list[ServerGroup], clients: list[ClientPool]) -> None:
        import psutil

        self.servers, self.clients, self.psutil = servers, clients, psutil
        self.start = self._read()

    def _read(self) -> tuple[float, float, float, float, float]:
        t = self.psutil.cpu_times()
        # guest time is already in user; steal is the hypervisor's, not this machine's load
        busy = (
            sum(t)
            - t.idle
            - getattr(t, "iowait", 0.0)
            - getattr(t, "steal", 0.0)
            - getattr(t, "guest", 0.0)
            - getattr(t, "guest_nice", 0.0)
        )
        me = os.times()
        servers = sum(_safe(s.cpu) for s in self.servers)
        clients = sum(_safe(c.cpu) for c in self.clients)
        return (time.monotonic(), busy, servers, clients, me.user + me.system)

    def result(self) -> dict:
        end = self._read()
        wall = max(1e-9, end[0] - self.start[0])
        d = [b - a for a, b in zip(self.start, end, strict=True)]
        foreign = d[1] - d[2] - d[3] - d[4]
        return {
            "phase_s": _r(wall, 2),
            "machine_busy_pct": _r(d[1] / wall * 100, 0),
            "server_busy_pct": _r(d[2] / wall * 100, 0),
            "clients_busy_pct": _r(d[3] / wall * 100, 0),
            "emitter_busy_pct": _r(d[4] / wall * 100, 0),
            "foreign_cpu_pct": _r(max(0.0, foreign) / wall * 100, 0),
            "loadavg_1m": _r(os.getloadavg()[0]),
        }


async def settle(server: ServerGroup, *, below: float = 0.05, limit: float = 60.0) -> float:
    """Wait until the server uses less than ``below`` of a core over a second (at most
    ``limit`` s); returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        cpu0, m0 = server.cpu(), time.monotonic()
        await asyncio.sleep(1.0)
        if (server.cpu() - cpu0) / (time.monotonic() - m0) < below:
            break
    return _r(time.monotonic() - start, 1)


def _threads(pids: list[int]) -> int | None:
    """OS threads of the server processes (a Django request waiting holds one)."""
    import psutil

    try:
        return sum(psutil.Process(pid).num_threads() for pid in pids)
    except psutil.Error:
        return None


def _safe(fn: Any) -> float:
    try:
        return fn()
    except Exception:
        return 0.0


def start_profiler(args: argparse.Namespace, kind: str, n: int, pid: int) -> Any:
    """``--py-spy``: sample the server (first process) with py-spy over the emit phase."""
    if not args.py_spy:
        return None
    import subprocess

    exe = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    out = Path(args.out) / "profiles" / f"{kind}-{n}.{args.py_spy}"
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = {"svg": "flamegraph", "txt": "raw", "json": "speedscope"}[args.py_spy]
    cmd = [exe, "record", "-p", str(pid), "-r", "250", "-f", fmt, "-o", str(out), "-d", "600"]
    if args.py_spy_idle:
        cmd.append("--idle")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent
    )
    _children.append(proc)
    return proc, out


def stop_profiler(profiler: Any) -> str:
    proc, out = profiler
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except Exception:
        proc.kill()
    return str(out)


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


# Environment: database, Redis ----------------------------------------------------------------


def flush_redis(url: str) -> None:
    """Empty the benchmark's own Redis database (``--redis-url``, db 13 by default)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def check_loopback(url: str, what: str) -> None:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        sys.exit(f"{what} must be on this machine's loopback (127.0.0.0/8), not {host!r}")


def setup_database(args: argparse.Namespace, tmp: Path) -> tuple[str, Any]:
    """A fresh database; returns its URL and a cleanup callable."""
    if args.database == "sqlite":
        path = tmp / "bench.sqlite3"
        return f"sqlite:///{path}", lambda: None
    import psycopg

    check_loopback(args.postgres_url, "--postgres-url")
    name = f"notifications_bench_{os.getpid()}"
    admin = args.postgres_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return args.postgres_url.rsplit("/", 1)[0] + "/" + name, drop


APP_TREES = ("notifications", "project", "bench", "manage.py")


def snapshot(tmp: Path) -> tuple[Path, dict]:
    """Copy the code under test to ``tmp/src`` and run every process from there.

    The work tree may change while the benchmark runs (other people at work); a copy keeps
    one run on one version of the code. Returns the copy and what it is (git HEAD, whether
    the app has uncommitted changes, a hash of its files).
    """
    import hashlib
    import subprocess

    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results", "*.sqlite3*")
    digest = hashlib.sha256()
    for name in APP_TREES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    for file in sorted((src).rglob("*.py")):
        if file.parts[len(src.parts)] in ("notifications", "project"):
            digest.update(str(file.relative_to(src)).encode() + b"\0" + file.read_bytes())

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "notifications", "project").splitlines()
    code = {
        "head": git("rev-parse", "--short", "HEAD") or "unknown",
        "head_subject": git("log", "-1", "--format=%s"),
        "dirty": bool(changed),
        "changed": changed,
        "tree_sha256": digest.hexdigest(),
    }
    sys.path.insert(0, str(src))  # this process (the emitter) imports the same copy
    return src, code


def setup_django(env: dict[str, str]) -> None:
    """Configure Django in this process (the emitter) exactly like the servers."""
    for key in list(os.environ):
        if key.startswith(("DJANGO_", "NOTIFICATIONS_")) or key in (
            "DATABASE_URL",
            "REDIS_URL",
            "REDIS_PREFIX",
        ):
            del os.environ[key]
    os.environ.update(env)
    os.environ["NOTIFICATIONS_LOG_LEVEL"] = "WARNING"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


# Steady load: 1,000 notifications/s, each to one signed-in user -----------------------------


def make_users(n: int, cookie_file: Path, parts: list[int]) -> list[Any]:
    """n users with one session each; writes one Cookie header value a line, split per client
    process (``cookie_file.with_suffix(".i")``) in the order the processes open sockets."""
    from datetime import timedelta

    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone
    from django.utils.crypto import get_random_string

    User = get_user_model()
    User.objects.filter(username__startswith="bench-").delete()
    users = [User(username=f"bench-{i:06d}", password="!") for i in range(n)]
    User.objects.bulk_create(users, batch_size=2000)
    users = list(User.objects.filter(username__startswith="bench-").order_by("username"))
    store = SessionStore()
    expire = timezone.now() + timedelta(days=1)
    sessions, cookies = [], []
    for user in users:
        key = get_random_string(32, "abcdefghijklmnopqrstuvwxyz0123456789")
        data = {
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
        sessions.append(
            Session(session_key=key, session_data=store.encode(data), expire_date=expire)
        )
        cookies.append(f"sessionid={key}")
    Session.objects.bulk_create(sessions, batch_size=2000)
    start = 0
    for i, size in enumerate(parts):
        cookie_file.with_suffix(f".{i}").write_text("\n".join(cookies[start : start + size]))
        start += size
    return users


def precreate_events(users: list[Any], total: int) -> list[tuple[int, int]]:
    """``total`` committed events, each to one user (round robin): (event id, user id).

    For ``--steady-emit publish``: the rows exist as ``notify()`` would leave them, and the
    emitter then only publishes their layer messages at the target rate."""
    from django.db import transaction

    from notifications.models import Event, Reach, Recipient

    with transaction.atomic():
        events = Event.objects.bulk_create(
            [
                Event(title="bench", data={}, reach=Reach.TARGETED, recipient_count=1)
                for _ in range(total)
            ],
            batch_size=2000,
        )
        pairs = [(e.id, users[i % len(users)].pk) for i, e in enumerate(events)]
        Recipient.objects.bulk_create(
            [Recipient(event_id=eid, user_id=uid) for eid, uid in pairs], batch_size=2000
        )
    return sorted(pairs)


async def run_steady(args: argparse.Namespace, ctx: dict) -> dict:
    """Steady load: ``--steady-rate`` notifications/s, each to one signed-in user, for
    ``--steady-seconds``, to ``--steady-clients`` connected sockets (one user each).

    ``--steady-emit publish`` (default): the events are stored first (bulk) and the emitter
    publishes each one's channel-layer message, the one ``notify()`` publishes on commit, at
    the target rate; the server's poll is pushed out so that only the layer delivers. This
    measures the server at the target rate. ``--steady-emit notify``: ``notify(user, ...)``
    from ``--steady-emitters`` threads; on 2 cores this process cannot reach 1,000/s (one
    ``notify()`` costs milliseconds of CPU), so it reports the rate it reached.
    """
    from asgiref.sync import sync_to_async

    kind, n, rate, seconds = (
        args.steady_server,
        args.steady_clients,
        args.steady_rate,
        args.steady_seconds,
    )
    mode = args.steady_emit
    case: dict[str, Any] = {
        "kind": kind,
        "n": n,
        "mode": "steady",
        "emit": mode,
        "rate_target": rate,
        "seconds": seconds,
        "status": "ok",
    }
    flush_redis(args.redis_url)
    log(f"steady: creating {n} users and sessions")
    probe = ClientPool(["ws://127.0.0.1:1/"], n, args.per_process, log_dir=ctx["tmp"])
    cookie_file = ctx["tmp"] / "cookies"
    users = await sync_to_async(make_users)(n, cookie_file, probe.sizes)
    env = dict(ctx["project_env"])
    if mode == "publish":
        env["NOTIFICATIONS_POLL_INTERVAL"] = "3600"
    server = ServerGroup(
        kind,
        env=env,
        redis_url=args.redis_url,
        log_dir=ctx["tmp"],
        ping_interval=args.ping_interval,
        cwd=ctx["src"],
    )
    _children.append(server)
    clients = None
    try:
        server.start()
        await asyncio.sleep(1.0)
        rss0 = server.rss()
        clients = ClientPool(
            server.urls,
            n,
            args.per_process,
            log_dir=ctx["tmp"],
            cookies=cookie_file,
            spread_sources=n > args.spread_above,
            concurrency=args.concurrency,
            cwd=ctx["src"],
        )
        await clients.start()
        log(f"steady: {kind} pid {server.pids}, connecting {n} signed-in clients")
        await clients.connect(timeout=60 + n / 25)
        ready = [r for r in clients.ready if r]
        ramp = max(r["end"] for r in ready) - min(r["start"] for r in ready)
        case.update(
            connected=clients.open,
            handshakes_per_s=_r(clients.open / ramp, 0),
            failures=sum(r["failures"] for r in ready),
            rss_per_conn_kib=_r((server.rss() - rss0) / max(1, clients.open) / 1024),
        )
        log(
            f"steady: {clients.open}/{n} signed-in sockets connected in {ramp:.1f}s "
            f"({case['handshakes_per_s']}/s)"
        )
        if clients.open == 0:
            case["status"] = "connect-failed"
            return case
        total = int(rate * seconds)
        lag: list[float] = []
        if mode == "publish":
            from channels.layers import get_channel_layer

            from notifications.realtime import messages

            from .emitters import _dumps, frame

            log(f"steady: storing {total} events")
            pairs = await sync_to_async(precreate_events)(users, total)
            layer = get_channel_layer()

            async def emit(i: int) -> None:
                event_id, user_id = pairs[i]
                text = _dumps(frame(event_id, time.time()))
                await layer.group_send(
                    messages.HUB_GROUP,
                    messages.event(
                        event_id=event_id,
                        frame=text,
                        reach="",
                        users=[user_id],
                        groups=[],
                        topic_id=None,
                    ),
                )

        else:
            from concurrent.futures import ThreadPoolExecutor

            from notifications import services

            asyncio.get_running_loop().set_default_executor(
                ThreadPoolExecutor(args.steady_emitters)
            )
            sem = asyncio.Semaphore(args.steady_emitters)
            notify = sync_to_async(services.notify, thread_sensitive=False)

            async def emit(i: int) -> None:
                async with sem:
                    await notify(users[i % len(users)], "bench", data={"t": time.time()})

        profiler = start_profiler(args, "steady-" + kind, n, server.pids[0])
        await asyncio.sleep(2.0)
        log(f"steady: emitting {total} notifications at {rate}/s ({mode})")
        me0 = os.times()
        cpu0, m0 = server.cpu(), time.monotonic()
        start, wall_start = time.monotonic(), time.time()
        tasks = []
        for i in range(total):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lag.append(time.monotonic() - due)
            if mode == "publish":
                await emit(i)
            else:
                tasks.append(asyncio.ensure_future(emit(i)))
            if time.monotonic() - start > seconds * 3:
                log("steady: emitter far behind schedule, stopping early")
                total = i + 1
                break
        if tasks:
            await asyncio.wait_for(asyncio.gather(*tasks), 120)
        sent_s = time.monotonic() - start
        me1 = os.times()
        cpu1, m1 = server.cpu(), time.monotonic()
        if profiler is not None:
            case["profile"] = stop_profiler(profiler)
        await asyncio.sleep(2.0)
        await clients.dump()
        lat = [
            v / 1000 for s in clients.stats if s for p in s["per_id"].values() for v in p["lat_us"]
        ]
        # Latency over time: per half second of emission (by emit time = receive - latency).
        buckets: dict[int, list[float]] = {}
        for stats in clients.stats:
            for p in (stats or {}).get("per_id", {}).values():
                for v in p["lat_us"]:
                    emitted = p["first"] - v / 1e6
                    buckets.setdefault(int((emitted - wall_start) * 2), []).append(v / 1000)
        case["timeline"] = [
            {"t_s": k / 2, "n": len(v), "p50_ms": _r(pct(v, 50)), "p99_ms": _r(pct(v, 99)),
             "max_ms": _r(max(v))}
            for k, v in sorted(buckets.items())
        ]  # fmt: skip
        case.update(
            sent=total,
            sent_rate=_r(total / sent_s, 0),
            received=len(lat),
            emit_lag_p99_ms=_r((pct(lag, 99) or 0) * 1000),
            latency_p50_ms=_r(pct(lat, 50)),
            latency_p99_ms=_r(pct(lat, 99)),
            latency_max_ms=_r(max(lat) if lat else None),
            server_cpu_pct=_r((cpu1 - cpu0) / (m1 - m0) * 100),
            server_cpu_us_per_delivery=_r((cpu1 - cpu0) / max(1, len(lat)) * 1e6, 1),
            emitter_cpu_us_per_emit=_r(
                (me1.user + me1.system - me0.user - me0.system) / max(1, total) * 1e6, 1
            ),
        )
        log(
            f"steady: sent {total} in {sent_s:.1f}s ({case['sent_rate']}/s), received "
            f"{len(lat)}; latency p50 {case['latency_p50_ms']} ms p99 {case['latency_p99_ms']} "
            f"ms; server CPU {case['server_cpu_pct']}% of a core; emitter "
            f"{case['emitter_cpu_us_per_emit']} us CPU per emit"
        )
        return case
    except Exception as exc:
        case["status"] = "error"
        case["error"] = f"{type(exc).__name__}: {exc}"
        log(f"steady: ERROR {case['error']}\n{server.output()}")
        return case
    finally:
        if clients is not None:
            await clients.stop()
        server.stop()


# Report ---------------------------------------------------------------------------------------


def ratios(cases: list[dict]) -> dict:
    """Each kind of ours against the bare server it ran with (or any bare at that N)."""
    plain = [c for c in cases if c.get("mode") is None]  # not steady, not the long-poll runs
    out: dict[str, dict] = {}
    for c in plain:
        kind, n = c["kind"], c["n"]
        if not kind.startswith("ours"):
            continue
        bares = [b for b in plain if b["kind"] == "bare" and b["n"] == n]
        paired = [b for b in bares if b.get("paired_with") == kind]
        bare = (paired or bares or [None])[0]
        entry: dict[str, Any] = {}
        if bare and bare.get("fanout_p50_ms"):

            def ratio(key: str, a: dict = c, b: dict = bare) -> float | None:
                return _r(a[key] / b[key]) if a.get(key) and b.get(key) else None

            entry.update(
                fanout_p50_vs_bare=ratio("fanout_p50_ms"),
                fanout_p99_vs_bare=ratio("fanout_p99_ms"),
                spread_p50_vs_bare=ratio("spread_p50_ms"),
                cpu_vs_bare=ratio("server_cpu_us_per_delivery"),
                rss_vs_bare=ratio("rss_per_conn_kib"),
            )
        stock = [x for x in plain if x["kind"] == "stock" and x["n"] == n]
        if stock and stock[0].get("fanout_p50_ms") and c.get("fanout_p50_ms"):
            entry["stock_vs_this_p50"] = _r(stock[0]["fanout_p50_ms"] / c["fanout_p50_ms"], 1)
        if entry:
            out[f"{kind}@{n}"] = entry
    return out


LONGPOLL_FIGURES = (
    "connected", "handshakes_per_s", "rss_per_conn_kib", "notifications", "completed",
    "deliveries", "server_threads", "wire_bytes_per_delivery", "wire_tx_per_delivery",
    "wire_rx_per_delivery",
    "server_cpu_us_per_delivery", "server_cpu_us_per_delivery_phase", "fanout_p50_ms",
    "fanout_p99_ms", "latency_p50_ms", "latency_p99_ms", "client_cpu_us_per_frame",
    "foreign_cpu_pct", "status", "longpoll_exchanges", "longpoll_empty_answers",
    "longpoll_setup_bytes_per_client", "longpoll_reconnects", "longpoll_http_errors",
)  # fmt: skip


def longpoll_rows(cases: list[dict]) -> dict[str, dict]:
    """Per ``longpoll_pair``: the WebSocket side, the long-poll side and long-poll / WebSocket."""
    out: dict[str, dict] = {}
    for c in cases:
        pair = c.get("longpoll_pair")
        if not pair:
            continue
        side = "longpoll" if c["kind"] == "ours-longpoll" else "websocket"
        entry = out.setdefault(pair, {"n": c["n"]})
        entry[side] = {"kind": c["kind"], **{k: c.get(k) for k in LONGPOLL_FIGURES}}
    for entry in out.values():
        lp, ws = entry.get("longpoll"), entry.get("websocket")
        if not (lp and ws):
            continue

        def ratio(key: str, a: dict = lp, b: dict = ws) -> float | None:
            return _r(a[key] / b[key]) if a.get(key) and b.get(key) else None

        entry["ratio"] = {
            "bytes_per_delivery": ratio("wire_bytes_per_delivery"),
            "server_to_client_bytes": ratio("wire_rx_per_delivery"),
            "cpu_window": ratio("server_cpu_us_per_delivery"),
            "cpu_phase": ratio("server_cpu_us_per_delivery_phase"),
            "fanout_p50": ratio("fanout_p50_ms"),
            "fanout_p99": ratio("fanout_p99_ms"),
            "latency_p50": ratio("latency_p50_ms"),
            "rss_per_conn": ratio("rss_per_conn_kib"),
        }
    return out


def longpoll_table(cases: list[dict]) -> str:
    """The long-poll baseline against our WebSocket path (``ours-longpoll`` runs)."""
    rows = longpoll_rows(cases)
    if not rows:
        return ""

    def f(v: Any) -> str:
        return "-" if v is None else str(v)

    lines = [
        "Long-poll baseline against the WebSocket path (each alone, same N, one after the "
        "other; bytes counted by the clients on their sockets, request + response for "
        "long-poll, frame header + payload for WebSocket):",
        "",
        "| path | N | conn | bytes/delivery (client→server + server→client) | "
        "server CPU µs/delivery: fan-out window / whole phase | fan-out p50 ms | p99 ms | "
        "latency p50/p99 ms | RSS KiB/conn | server threads | client CPU µs/delivery | status | "
        "others' CPU % |",
        "|" + "---|" * 13,
    ]
    ratios_text = []
    for entry in sorted(rows.values(), key=lambda e: e["n"]):
        for side in ("websocket", "longpoll"):
            c = entry.get(side)
            if not c:
                continue
            status = c["status"] + (
                f" ({c['completed']}/{c['notifications']})" if c.get("notifications") else ""
            )
            lines.append(
                f"| {side} ({c['kind']}) | {entry['n']} | {f(c.get('connected'))} | "
                f"{f(c.get('wire_bytes_per_delivery'))} ({f(c.get('wire_tx_per_delivery'))} + "
                f"{f(c.get('wire_rx_per_delivery'))}) | "
                f"{f(c.get('server_cpu_us_per_delivery'))} / "
                f"{f(c.get('server_cpu_us_per_delivery_phase'))} | "
                f"{f(c.get('fanout_p50_ms'))} | {f(c.get('fanout_p99_ms'))} | "
                f"{f(c.get('latency_p50_ms'))} / {f(c.get('latency_p99_ms'))} | "
                f"{f(c.get('rss_per_conn_kib'))} | {f(c.get('server_threads'))} | "
                f"{f(c.get('client_cpu_us_per_frame'))} | "
                f"{status} | {f(c.get('foreign_cpu_pct'))} |"
            )
        r = entry.get("ratio")
        if r:
            ratios_text.append(
                f"- long-poll / WebSocket at N={entry['n']}: bytes per delivery "
                f"{f(r['bytes_per_delivery'])}x (server→client alone "
                f"{f(r['server_to_client_bytes'])}x); server CPU per delivery "
                f"{f(r['cpu_phase'])}x over the whole phase ({f(r['cpu_window'])}x in the "
                f"fan-out windows); fan-out p50 {f(r['fanout_p50'])}x, p99 {f(r['fanout_p99'])}x;"
                f" RSS per connection {f(r['rss_per_conn'])}x"
            )
        lp = entry.get("longpoll") or {}
        if lp.get("longpoll_exchanges") is not None:
            ratios_text.append(
                f"  (long-poll at N={entry['n']}: {lp.get('longpoll_exchanges')} answers carried "
                f"{lp.get('deliveries')} notifications; {lp.get('longpoll_empty_answers')} empty "
                f"answers (timeouts); first request + answer "
                f"{lp.get('longpoll_setup_bytes_per_client')} bytes a client; "
                f"{lp.get('longpoll_reconnects')} reconnects, "
                f"{lp.get('longpoll_http_errors')} HTTP errors)"
            )
    return "\n".join([*lines, "", *ratios_text])


def compact_table(cases: list[dict], summary: dict) -> str:
    """The table docs/performance.md shows."""
    lines = [
        "| server | N | handshakes/s | RSS KiB/conn | fan-out p50 ms | p99 ms | "
        "server CPU µs/delivery | vs bare p50 / p99 / CPU | others' CPU % |",
        "|" + "---|" * 9,
    ]
    for c in cases:
        if c.get("mode") is not None or c.get("status") == "skipped":
            continue
        r = summary.get(f"{c['kind']}@{c['n']}", {})
        vs = (
            f"{r.get('fanout_p50_vs_bare')} / {r.get('fanout_p99_vs_bare')} / "
            f"{r.get('cpu_vs_bare')}"
            if r.get("fanout_p50_vs_bare")
            else ""
        )
        label = c["kind"] + (f" (with {c['paired_with']})" if c.get("paired_with") else "")
        cells = [label, c["n"], c.get("handshakes_per_s"), c.get("rss_per_conn_kib"),
                 c.get("fanout_p50_ms"), c.get("fanout_p99_ms"),
                 c.get("server_cpu_us_per_delivery"), vs, c.get("foreign_cpu_pct")]  # fmt: skip
        lines.append("| " + " | ".join("-" if v is None else str(v) for v in cells) + " |")
    return "\n".join(lines)


def table(cases: list[dict], summary: dict) -> str:
    head = (
        "| server | N | conn | handshakes/s | RSS KiB/conn | fan-out p50 ms | p99 ms | "
        "first→last p50 ms | latency p50/p99 ms | server CPU µs/delivery | "
        "client CPU µs/frame | vs bare p50 / p99 / CPU | status | others' CPU % |"
    )
    lines = [head, "|" + "---|" * 14]

    def f(v: Any) -> str:
        return "-" if v is None else str(v)

    for c in cases:
        if c.get("mode") is not None:
            continue
        r = summary.get(f"{c['kind']}@{c['n']}", {})
        vs = (
            f"{f(r.get('fanout_p50_vs_bare'))} / {f(r.get('fanout_p99_vs_bare'))} / "
            f"{f(r.get('cpu_vs_bare'))}"
            if r
            else ""
        )
        status = c["status"] + (
            f" ({c['completed']}/{c['notifications']})" if c.get("notifications") else ""
        )
        label = c["kind"] + (f" (with {c['paired_with']})" if c.get("paired_with") else "")
        lines.append(
            f"| {label} | {c['n']} | {f(c.get('connected'))} | {f(c.get('handshakes_per_s'))}"
            f" | {f(c.get('rss_per_conn_kib'))} | {f(c.get('fanout_p50_ms'))} | "
            f"{f(c.get('fanout_p99_ms'))} | {f(c.get('spread_p50_ms'))} | "
            f"{f(c.get('latency_p50_ms'))} / {f(c.get('latency_p99_ms'))} | "
            f"{f(c.get('server_cpu_us_per_delivery'))} | {f(c.get('client_cpu_us_per_frame'))} |"
            f" {vs} | {status} | {f(c.get('foreign_cpu_pct'))} |"
        )
    stock_lines = [
        f"- stock Channels / {k.split('@')[0]} at N={k.split('@')[1]}: "
        f"{v['stock_vs_this_p50']}x slower (p50)"
        for k, v in summary.items()
        if v.get("stock_vs_this_p50")
    ]
    steady = [c for c in cases if c.get("mode") == "steady"]
    out = "\n".join(lines)
    if stock_lines:
        out += "\n\n" + "\n".join(stock_lines)
    for s in steady:
        out += (
            f"\n\nSteady load ({s['kind']}, {s.get('connected')} signed-in sockets, one user "
            f"each; handshakes {s.get('handshakes_per_s')}/s, RSS {s.get('rss_per_conn_kib')} "
            f"KiB/conn): target {s['rate_target']}/s for {s['seconds']} s, each to one user, "
            f"emitted by {s.get('emit')}: sent {s.get('sent')} at {s.get('sent_rate')}/s, "
            f"received {s.get('received')}; emit-to-receive p50 {s.get('latency_p50_ms')} ms, "
            f"p99 {s.get('latency_p99_ms')} ms, max {s.get('latency_max_ms')} ms; server CPU "
            f"{s.get('server_cpu_pct')}% of a core ({s.get('server_cpu_us_per_delivery')} "
            f"us/delivery); emitter {s.get('emitter_cpu_us_per_emit')} us CPU per emit; "
            f"status {s['status']}"
        )
    return out


def plot(cases: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10.5, 5), dpi=110)
    styles = {
        "bare": ("k", "o"),
        "ours-daphne": ("tab:blue", "s"),
        "ours-uvicorn": ("tab:green", "^"),
        "ours-uvicorn-sansio": ("tab:purple", "v"),
        "ours-daphne-2p": ("tab:cyan", "s"),
        "ours-uvicorn-2p": ("tab:olive", "^"),
        "stock": ("tab:red", "x"),
    }
    labels = {
        "bare": "bare websockets.broadcast() (ceiling; median of its runs)",
        "stock": "stock Channels group_send",
    }
    kinds = sorted(
        {c["kind"] for c in cases if c.get("mode") is None},
        key=lambda k: KINDS.index(k) if k in KINDS else 99,
    )
    for kind in kinds:
        rows = sorted(
            (
                c
                for c in cases
                if c["kind"] == kind and c.get("fanout_p50_ms") and c.get("mode") is None
            ),
            key=lambda c: c["n"],
        )
        if not rows:
            continue
        color, marker = styles.get(kind, ("tab:gray", "."))
        # Several bare runs at one N (one per kind of ours it was paired with): the median.
        by_n: dict[int, list[dict]] = {}
        for c in rows:
            by_n.setdefault(c["n"], []).append(c)
        xs = sorted(by_n)
        med = statistics.median
        rows = [
            {
                "fanout_p50_ms": med(c["fanout_p50_ms"] for c in by_n[x]),
                "fanout_p99_ms": med(c["fanout_p99_ms"] for c in by_n[x]),
            }
            for x in xs
        ]
        ax.plot(
            xs,
            [c["fanout_p50_ms"] for c in rows],
            color=color,
            marker=marker,
            label=f"{labels.get(kind, kind)} p50",
        )
        ax.plot(
            xs,
            [c["fanout_p99_ms"] for c in rows],
            color=color,
            marker=marker,
            linestyle=":",
            alpha=0.6,
        )
        for c in cases:
            if (
                c["kind"] == kind
                and c["status"] == "dnf"
                and not c.get("fanout_p50_ms")
                and c.get("mode") is None
            ):
                ax.annotate("did not finish", (c["n"], ax.get_ylim()[1]), color=color)
    ax.set_xlabel("connected clients (N)")
    ax.set_ylabel("emit → last client received (ms), solid p50, dotted p99")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# Main ------------------------------------------------------------------------------------------


def _cleanup() -> None:
    for child in list(_children):
        try:
            if isinstance(child, ServerGroup):
                child.stop()
            elif getattr(child, "returncode", 0) is None:
                child.kill()
        except Exception:
            pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,5000,10000", help="comma separated N")
    p.add_argument(
        "--servers",
        default=(
            "bare,ours-daphne,ours-uvicorn,ours-uvicorn-sansio,ours-uvicorn-2p,stock,ours-longpoll"
        ),
        help=f"comma separated, from: {', '.join(KINDS)} (ours-longpoll: the long-poll "
        "baseline, run at --longpoll-sizes against ours-uvicorn-sansio)",
    )
    p.add_argument(
        "--longpoll-sizes",
        default="1000",
        help="comma separated N at which the long-poll baseline (ours-longpoll in --servers) "
        "runs, each after ours-uvicorn-sansio alone at the same N; empty: none",
    )
    p.add_argument(
        "--longpoll-whitenoise",
        action="store_true",
        help="keep the project's sync-only WhiteNoise middleware in the long-poll server "
        "(one thread held per waiting request; see bench/servers/longpoll_settings.py)",
    )
    p.add_argument(
        "--replot",
        action="store_true",
        help="only rewrite OUT/latest.md and OUT/fanout.png from OUT/latest.json",
    )
    p.add_argument("--quick", action="store_true", help="5 notifications a case, no steady run")
    p.add_argument("--count", type=int, default=None, help="notifications per case (20)")
    p.add_argument("--out", default="bench/results", help="folder for latest.json/md, fanout.png")
    p.add_argument("--per-process", type=int, default=2500, help="sockets per client process")
    p.add_argument(
        "--concurrency", type=int, default=200, help="handshakes in flight per client process"
    )
    p.add_argument(
        "--spread-above", type=int, default=4000, help="bind clients to 127.0.0.2-9 above this N"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="s to wait for one fan-out")
    p.add_argument(
        "--stock-timeout",
        type=float,
        default=60.0,
        help="s to wait for one stock fan-out; longer = did not finish",
    )
    p.add_argument("--stock-max", type=int, default=10000, help="skip stock above this N")
    p.add_argument(
        "--case-budget",
        type=float,
        default=120.0,
        help="s of emitting per case before it stops early",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="one kind after another instead of round-robin emission across kinds",
    )
    p.add_argument("--gap", type=float, default=0.2, help="s between notifications")
    p.add_argument("--idle-seconds", type=float, default=2.0, help="s to measure idle CPU")
    p.add_argument(
        "--ping-interval",
        type=float,
        default=600.0,
        help="server keepalive ping interval (s), every kind",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        help="NOTIFICATIONS_POLL_INTERVAL for the project (default: its own, 1 s)",
    )
    p.add_argument(
        "--py-spy",
        choices=["svg", "txt", "json"],
        default=None,
        help="profile each server with py-spy over its emit phase into OUT/profiles/",
    )
    p.add_argument("--py-spy-idle", action="store_true", help="py-spy --idle (waits too)")
    p.add_argument(
        "--notifications",
        default="",
        help="JSON object of NOTIFICATIONS keys to override in our servers (diagnosis only)",
    )
    p.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--postgres-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    p.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/13",
        help="a Redis database the benchmark may empty (FLUSHDB) at will",
    )
    p.add_argument(
        "--steady",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run the steady-load case (default: on unless --quick)",
    )
    p.add_argument("--steady-only", action="store_true", help="only the steady-load case")
    p.add_argument(
        "--steady-server",
        default="ours-uvicorn",
        choices=[k for k in KINDS if k.startswith("ours") and k != "ours-longpoll"],
    )
    p.add_argument("--steady-clients", type=int, default=10000)
    p.add_argument("--steady-rate", type=float, default=1000.0, help="notifications per second")
    p.add_argument("--steady-seconds", type=float, default=10.0)
    p.add_argument(
        "--steady-emit",
        choices=["publish", "notify"],
        default="publish",
        help="publish stored events' layer messages at the rate, or call notify() (see docs)",
    )
    p.add_argument("--steady-emitters", type=int, default=4, help="notify() threads")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.longpoll_sizes = [int(s) for s in args.longpoll_sizes.split(",") if s.strip()]
    args.kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    for kind in args.kinds:
        if kind not in KINDS:
            p.error(f"unknown server {kind!r}; known: {', '.join(KINDS)}")
    if args.count is None:
        args.count = 5 if args.quick else 20
    if args.steady is None:
        args.steady = not args.quick
    check_loopback(args.redis_url, "--redis-url")
    return args


async def amain(args: argparse.Namespace, ctx: dict) -> dict:
    cases: list[dict] = []
    stock_stopped = False
    if not args.steady_only:
        for n in args.sizes:
            kinds = [k for k in args.kinds if k != "ours-longpoll"]
            if not kinds:
                break
            if "stock" in kinds and (stock_stopped or n > args.stock_max):
                log(f"stock n={n}: skipped (did not finish at a smaller N, or above --stock-max)")
                kinds.remove("stock")
                cases.append({"kind": "stock", "n": n, "status": "skipped"})
            for case in await run_size(n, kinds, args, ctx):
                cases.append(case)
                if case["kind"] == "stock" and case["status"] != "ok":
                    stock_stopped = True
            # What is done so far, in case a later size fails or the run is stopped.
            partial = Path(args.out) / "partial.json"
            partial.write_text(json.dumps({"cases": cases}, indent=1))
        if "ours-longpoll" in args.kinds:
            for n in args.longpoll_sizes:
                cases.extend(await run_longpoll(n, args, ctx, cases))
                partial = Path(args.out) / "partial.json"
                partial.write_text(json.dumps({"cases": cases}, indent=1))
    if args.steady or args.steady_only:
        cases.append(await run_steady(args, ctx))
    return {"cases": cases}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.replot:
        out = Path(args.out)
        report(json.loads((out / "latest.json").read_text()), out)
        return
    atexit.register(_cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmdline = " ".join(["python -m bench.run", *(sys.argv[1:] if argv is None else argv)])
    log(
        f"{cmdline}; {os.cpu_count()} cores; sizes {args.sizes}; servers {args.kinds}; "
        f"{args.count} notifications a case"
    )
    started = time.time()
    _remove_stale_temp()
    tmp = Path(tempfile.mkdtemp(prefix=f"notifications-bench-{os.getpid()}-"))
    drop_db = None
    try:
        src, code = snapshot(tmp)
        log(
            f"code under test: {code['head']}{' + uncommitted changes' if code['dirty'] else ''}"
            f" (app tree sha256 {code['tree_sha256'][:12]}), copied to {src}"
        )
        database_url, drop_db = setup_database(args, tmp)
        env = project_env(
            database_url=database_url, redis_url=args.redis_url, poll_interval=args.poll_interval
        )
        if args.notifications:
            json.loads(args.notifications)  # fail early on bad JSON
            env["BENCH_NOTIFICATIONS"] = args.notifications
            env["DJANGO_SETTINGS_MODULE"] = "bench.servers.tuned_settings"
        log(f"database {database_url}; Redis {args.redis_url}; migrating")
        setup_django(env)
        import notifications

        if not notifications.__file__.startswith(str(src)):
            raise RuntimeError(f"emitter imported {notifications.__file__}, not the copy")
        result = asyncio.run(amain(args, {"tmp": tmp, "src": src, "project_env": env}))
    finally:
        _cleanup()
        if drop_db is not None:
            try:
                drop_db()
            except Exception as exc:
                log(f"could not drop the benchmark database: {exc}")
        shutil.rmtree(tmp, ignore_errors=True)
    import django
    import psutil
    import websockets

    summary = ratios(result["cases"])
    result = {
        "command": cmdline,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": {
            "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {
            "django": django.get_version(),
            "websockets": websockets.__version__,
            **_versions("channels", "channels_redis", "daphne", "uvicorn", "redis"),
        },
        "settings": {
            "count": args.count,
            "per_process": args.per_process,
            "gap_s": args.gap,
            "ping_interval_s": args.ping_interval,
            "poll_interval_s": args.poll_interval,
            "database": args.database,
            "redis_url": args.redis_url,
            "notifications_override": args.notifications or None,
            "longpoll_sizes": args.longpoll_sizes if "ours-longpoll" in args.kinds else [],
            "longpoll_whitenoise": args.longpoll_whitenoise,
        },
        "code": code,
        "summary": summary,
        "longpoll": longpoll_rows(result["cases"]),
        **result,
    }
    (out / "latest.json").write_text(json.dumps(result, indent=1))
    (out / "partial.json").unlink(missing_ok=True)
    report(result, out)


def report(result: dict, out: Path) -> None:
    """Write OUT/latest.md and OUT/fanout.png from a result (also ``--replot``)."""
    code, cores = result["code"], result["machine"]["cores"]
    summary = ratios(result["cases"])
    md = (
        compact_table(result["cases"], summary)
        + "\n\nAll columns:\n\n"
        + table(result["cases"], summary)
    )
    lp = longpoll_table(result["cases"])
    if lp:
        md += "\n\n" + lp
    what = f"{cores} cores, code {code['head']}" + (
        " + uncommitted changes" if code["dirty"] else ""
    )
    (out / "latest.md").write_text(f"`{result['command']}` ({result['started']}, {what})\n\n{md}\n")
    plot(result["cases"], out / "fanout.png", f"{result['command']}\n{result['started']}, {what}")
    print("\n" + md + "\n", flush=True)
    log(f"wrote {out / 'latest.json'}, {out / 'latest.md'}, {out / 'fanout.png'}")


def _remove_stale_temp() -> None:
    """Temporary folders of runs that were killed (SIGKILL skips every cleanup)."""
    import psutil

    for path in Path(tempfile.gettempdir()).glob("notifications-bench-*-*"):
        pid = path.name.split("-")[2]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name.replace("_", "-"))
    return out


if __name__ == "__main__":
    main()
