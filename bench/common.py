"""What the benchmark scenarios share: logging, client worker pools, load and CPU readings,
profiling, the code snapshot, the database, Redis and Django set-up, and clean-up."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .servers import (
    ROOT,
    ServerGroup,
    die_with_parent,
    process_cpu,
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
    if getattr(args, "py_spy_gil", False):
        cmd.append("--gil")  # only the thread holding the GIL: where the CPU goes
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


@contextlib.contextmanager
def benchmark_environment(args: argparse.Namespace, *, notifications: str = "") -> Any:
    """One run's set-up and clean-up: a copy of the code under test, the database
    (``--database``), the servers' environment (``notifications``: JSON merged into their
    ``NOTIFICATIONS``), Django in this process. Yields ``{"tmp", "src", "code",
    "project_env"}``; removes the copy and the database, and stops every child, at the end."""
    from .servers import project_env

    _remove_stale_temp()
    tmp = Path(tempfile.mkdtemp(prefix=f"notifications-bench-{os.getpid()}-"))
    drop_db = None
    try:
        src, code = snapshot(tmp)
        database_url, drop_db = setup_database(args, tmp)
        env = project_env(
            database_url=database_url, redis_url=args.redis_url, poll_interval=args.poll_interval
        )
        if notifications:
            json.loads(notifications)  # fail early on bad JSON
            env["BENCH_NOTIFICATIONS"] = notifications
            env["DJANGO_SETTINGS_MODULE"] = "bench.servers.tuned_settings"
        setup_django(env)
        yield {"tmp": tmp, "src": src, "code": code, "project_env": env}
    finally:
        _cleanup()
        if drop_db is not None:
            try:
                drop_db()
            except Exception as exc:
                log(f"could not drop the benchmark database: {exc}")
        shutil.rmtree(tmp, ignore_errors=True)
