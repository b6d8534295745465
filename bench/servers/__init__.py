"""Server processes under test: how each kind is started, and its CPU and memory readings.

Kinds (``--servers`` of ``bench.run``):

- ``bare``: ``bench/servers/bare.py``, a bare ``websockets`` server calling ``broadcast()``.
- ``ours-daphne``: the project (``project.asgi:application``) served by daphne.
- ``ours-uvicorn``: the same app served by uvicorn with ``websockets``, ``httptools``, ``uvloop``.
- ``ours-uvicorn-sansio``: the same with uvicorn's ``--ws websockets-sansio`` implementation.
- ``ours-daphne-2p`` / ``ours-uvicorn-2p``: two such processes on two ports sharing Redis and the
  database; the clients are split between them.
- ``stock``: stock Django Channels group fan-out (``stock_channels.py``) served by daphne.
- ``ours-longpoll``: the long-polling baseline (``longpoll.py``: an async Django view at
  ``/longpoll/`` beside the project's routes, ``longpoll_asgi.py``, ``longpoll_settings.py``)
  served by uvicorn like ``ours-uvicorn-sansio``; its clients are ``bench/longpoll_clients.py``.

Every server listens on 127.0.0.1 only, with a listen backlog of 4096, and server-side
keepalive pings pushed out to ``ping_interval`` seconds (default 600) for every kind alike, so
that a burst of pings to thousands of sockets connected at once does not land inside a timed
fan-out (production keeps the 20 s default; the pings cost the same in every kind).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent.parent
PY = sys.executable

# The production server's HTTP protocol (the Dockerfile's): httptools with a deadline on the
# request head.
HTTP_PROTOCOL = "notifications.realtime.uvicorn_http:HttpToolsProtocol"

KINDS = (
    "bare",
    "ours-daphne",
    "ours-uvicorn",
    "ours-uvicorn-sansio",
    # The production server again, emitting transient pushes (services.push) instead of
    # stored notifications: the row for issue 9's "at least as fast as stored".
    "ours-uvicorn-sansio-push",
    "ours-daphne-2p",
    "ours-uvicorn-2p",
    # Three production processes sharing Redis: the 50,000-connection case (docs/scaling.md).
    "ours-uvicorn-sansio-3p",
    # Four: the failover case at 50,000 (bench.restart --failover --processes 4): the three
    # that remain take 16,700 each, under the descriptor limit of 20,000 a process.
    "ours-uvicorn-sansio-4p",
    "stock",
    "ours-longpoll",
)


try:  # resolved here, not in the forked child, which must not import or load anything
    import ctypes

    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when the benchmark process dies, even by SIGKILL
    (Linux ``PR_SET_PDEATHSIG``), so that no server outlives a killed run."""
    if _prctl is not None:
        _prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(extra: dict[str, str]) -> dict[str, str]:
    """The parent's environment without anything that would point the server elsewhere."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(
            ("PYTEST", "DJANGO_", "REDIS_URL", "DATABASE_URL", "NOTIFICATIONS_", "BENCH_")
        )
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def project_env(*, database_url: str, redis_url: str, poll_interval: float | None) -> dict:
    """Production-style settings from the environment (docs/deployment.md)."""
    env = {
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "bench-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz-not-for-prod",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        # Redis pub/sub channels ignore the database number: a prefix of this run's own keeps
        # other processes on the same Redis (tests, another benchmark) out of its hubs' group.
        "REDIS_PREFIX": f"bench{os.getpid()}",
    }
    if poll_interval is not None:
        env["NOTIFICATIONS_POLL_INTERVAL"] = str(poll_interval)
    return env


def command(kind: str, port: int, *, redis_url: str, channel: str, ping_interval: float) -> list:
    endpoint = f"tcp:port={port}:interface=127.0.0.1:backlog=4096"
    ping = str(int(ping_interval))
    if kind.startswith("ours-daphne"):
        return [PY, "-m", "daphne", "-e", endpoint, "--ping-interval", ping,
                "project.asgi:application"]  # fmt: skip
    if kind.startswith("ours-uvicorn") or kind == "ours-longpoll":
        # ours-longpoll: uvicorn as for ours-uvicorn-sansio (its clients use HTTP only)
        ws = "websockets" if kind in ("ours-uvicorn", "ours-uvicorn-2p") else "websockets-sansio"
        app = (
            "bench.servers.longpoll_asgi:application"
            if kind == "ours-longpoll"
            else "project.asgi:application"
        )
        options = (
            f"--host 127.0.0.1 --port {port} --ws {ws} --ws-per-message-deflate false "
            f"--backlog 4096 --http {HTTP_PROTOCOL} --loop uvloop --lifespan off "
            f"--log-level warning "
            f"--ws-ping-interval {ping} --ws-ping-timeout {ping}"
        )
        return [PY, "-m", "uvicorn", app, *options.split()]
    if kind == "bare":
        options = (
            f"--port {port} --redis-url {redis_url} --channel {channel} --ping-interval {ping}"
        )
        return [PY, "-m", "bench.servers.bare", *options.split()]
    if kind == "stock":
        return [PY, "-m", "daphne", "-e", endpoint, "--ping-interval", ping,
                "bench.servers.stock_asgi:application"]  # fmt: skip
    raise ValueError(f"unknown server kind {kind!r}; known: {', '.join(KINDS)}")


@dataclass
class ServerGroup:
    """One or more processes of one kind, started and stopped together."""

    kind: str
    env: dict[str, str]
    redis_url: str
    log_dir: Path
    channel: str = "bench.bare"
    ping_interval: float = 600.0
    cwd: Path = ROOT
    processes: list[subprocess.Popen] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    _ps: list[psutil.Process] = field(default_factory=list)

    @property
    def count(self) -> int:
        match = re.search(r"-(\d+)p$", self.kind)
        return int(match.group(1)) if match else 1

    @property
    def urls(self) -> list[str]:
        if self.kind == "ours-longpoll":
            return [f"http://127.0.0.1:{port}/longpoll/" for port in self.ports]
        return [f"ws://127.0.0.1:{port}/ws/notifications/" for port in self.ports]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def start(self, timeout: float = 60, ports: list[int] | None = None) -> ServerGroup:
        """Start the processes, on free ports or on ``ports`` (a restart on the same ones)."""
        for i in range(self.count):
            port = ports[i] if ports else free_port()
            log = self.log_dir / f"{self.kind}-{port}.log"
            cmd = command(
                self.kind,
                port,
                redis_url=self.redis_url,
                channel=self.channel,
                ping_interval=self.ping_interval,
            )
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    cmd,
                    cwd=self.cwd,
                    env=base_env(self.env),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            self.processes.append(proc)
            self.ports.append(port)
            self.logs.append(log)
            self._ps.append(psutil.Process(proc.pid))
            del i
        deadline = time.monotonic() + timeout
        for proc, port, log in zip(self.processes, self.ports, self.logs, strict=True):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{self.kind} exited early:\n{tail(log)}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{self.kind} did not listen within {timeout}s:\n{tail(log)}"
                        ) from None
                    time.sleep(0.05)
        return self

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes)

    def cpu(self) -> float:
        """CPU seconds (user + system) of all processes of the group, to the nanosecond.

        ``ours-longpoll``: from ``/proc/PID/stat`` (10 ms ticks) instead, which keeps the time
        of threads that ended: Django runs each request's ``sync_to_async`` calls on a thread
        of the request's own and ends it with the request, so the live threads' schedstat
        would miss most of that server's work."""
        if self.kind == "ours-longpoll":
            return sum(process_cpu_with_exited(p) for p in self._ps)
        return sum(process_cpu(p) for p in self._ps)

    def rss(self) -> int:
        return sum(p.memory_info().rss for p in self._ps)

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def output(self) -> str:
        return "\n".join(tail(log) for log in self.logs)


def process_cpu(p: psutil.Process) -> float:
    """CPU seconds of a process: the sum of its threads' on-CPU time from
    /proc/PID/task/*/schedstat (nanoseconds; ``cpu_times()`` counts 10 ms ticks, too coarse
    for a fan-out of a few milliseconds), or ``cpu_times()`` where that is missing. A thread
    that ended takes its time with it; worker threads of these servers live on."""
    try:
        total = 0
        for task in os.scandir(f"/proc/{p.pid}/task"):
            with open(f"{task.path}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        t = p.cpu_times()
        return t.user + t.system


def process_cpu_with_exited(p: psutil.Process) -> float:
    """CPU seconds of a process including threads that have ended (``/proc/PID/stat``
    utime + stime, in clock ticks of 10 ms)."""
    t = p.cpu_times()
    return t.user + t.system


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
