"""Handshake rate of one server process: signed-in sockets against anonymous ones, same run.

    .venv/bin/python -m bench.handshakes [--clients 3000] [--rounds 3] [--database postgres]
        [--server ours-uvicorn-sansio] [--concurrency 200] [--py-spy txt|svg]
        [--out bench/results/handshakes]

Each round opens ``--clients`` sockets with at most ``--concurrency`` handshakes in flight,
first anonymous (no cookie: the baseline, no database work) then signed in (one user and
one database session each, the ``hello`` with an unread count), waits for every ``hello``,
and closes them. Reported per case: handshakes per second (first connect to last ``hello``),
the server's CPU per handshake, the database server's CPU per handshake and its transactions
per handshake (PostgreSQL's ``pg_stat_database.xact_commit``: with autocommit, one per query),
and the ratio signed-in / anonymous. The median round is the result.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .common import (
    ClientPool,
    _children,
    _cleanup,
    _r,
    benchmark_environment,
    flush_redis,
    log,
    start_profiler,
    stop_profiler,
)
from .servers import KINDS, ServerGroup
from .steady import make_users


def _postgres_pids() -> list[Any]:
    import psutil

    return [
        p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres")
    ]


def _cpu_of(procs: list[Any]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except Exception:
            continue
    return total


def _commits() -> int | None:
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(cursor.fetchone()[0])


async def _one_case(
    label: str, n: int, server: ServerGroup, args: argparse.Namespace, ctx: dict, cookies: Any
) -> dict:
    from asgiref.sync import sync_to_async

    pool = ClientPool(
        server.urls,
        n,
        args.per_process,
        log_dir=ctx["tmp"],
        cookies=cookies,
        concurrency=args.concurrency,
        cwd=ctx["src"],
    )
    await pool.start()
    await asyncio.sleep(0.5)
    commits0 = await sync_to_async(_commits)()
    pg = _postgres_pids()
    pg0, cpu0, client0 = _cpu_of(pg), server.cpu(), pool.cpu()
    profiler = start_profiler(args, f"handshakes-{label}", n, server.pids[0])
    await pool.connect(timeout=60 + n / 20)
    if profiler is not None:
        stop_profiler(profiler)
    cpu1, client1 = server.cpu(), pool.cpu()
    pg1 = _cpu_of(pg + [p for p in _postgres_pids() if p.pid not in {q.pid for q in pg}])
    await asyncio.sleep(1.0)  # PostgreSQL's statistics arrive a moment later
    commits1 = await sync_to_async(_commits)()
    ready = [r for r in pool.ready if r]
    ramp = max(r["end"] for r in ready) - min(r["start"] for r in ready)
    opened = pool.open
    await pool.stop()
    case = {
        "case": label,
        "n": n,
        "opened": opened,
        "failures": sum(r["failures"] for r in ready),
        "seconds": _r(ramp, 2),
        "handshakes_per_s": _r(opened / ramp, 0),
        "server_cpu_us_per_handshake": _r((cpu1 - cpu0) / max(1, opened) * 1e6, 0),
        "database_cpu_us_per_handshake": _r((pg1 - pg0) / max(1, opened) * 1e6, 0),
        "client_cpu_us_per_handshake": _r((client1 - client0) / max(1, opened) * 1e6, 0),
        "database_transactions_per_handshake": (
            _r((commits1 - commits0) / max(1, opened), 2) if commits0 is not None else None
        ),
    }
    log(
        f"{label}: {opened}/{n} in {ramp:.2f}s = {case['handshakes_per_s']}/s; server "
        f"{case['server_cpu_us_per_handshake']} us, database "
        f"{case['database_cpu_us_per_handshake']} us, clients "
        f"{case['client_cpu_us_per_handshake']} us CPU per handshake; "
        f"{case['database_transactions_per_handshake']} database transactions per handshake"
    )
    await asyncio.sleep(1.0)  # let the server see the closes
    return case


async def amain(args: argparse.Namespace, ctx: dict) -> dict:
    from asgiref.sync import sync_to_async

    n = args.clients
    flush_redis(args.redis_url)
    log(f"creating {n} users and sessions")
    probe = ClientPool(["ws://127.0.0.1:1/"], n, args.per_process, log_dir=ctx["tmp"])
    cookie_file = ctx["tmp"] / "cookies"
    await sync_to_async(make_users)(n, cookie_file, probe.sizes)
    server = ServerGroup(
        args.server,
        env=dict(ctx["project_env"]),
        redis_url=args.redis_url,
        log_dir=ctx["tmp"],
        ping_interval=600,
        cwd=ctx["src"],
    )
    _children.append(server)
    rounds: list[dict] = []
    try:
        server.start()
        await asyncio.sleep(1.0)
        for i in range(args.rounds):
            log(f"round {i + 1}/{args.rounds}")
            anonymous = await _one_case("anonymous", n, server, args, ctx, None)
            signed_in = await _one_case("signed-in", n, server, args, ctx, cookie_file)
            rounds.append(
                {
                    "anonymous": anonymous,
                    "signed_in": signed_in,
                    "ratio": _r(signed_in["handshakes_per_s"] / anonymous["handshakes_per_s"], 2),
                }
            )
    finally:
        server.stop()
    median = sorted(rounds, key=lambda r: r["signed_in"]["handshakes_per_s"])[len(rounds) // 2]
    return {
        "rounds": rounds,
        "median_round": median,
        "signed_in_per_s": [r["signed_in"]["handshakes_per_s"] for r in rounds],
        "anonymous_per_s": [r["anonymous"]["handshakes_per_s"] for r in rounds],
        "ratio_median": statistics.median(r["ratio"] for r in rounds),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--server",
        default="ours-uvicorn-sansio",
        choices=[k for k in KINDS if k.startswith("ours")],
    )
    p.add_argument(
        "--concurrency", type=int, default=200, help="handshakes in flight per client process"
    )
    p.add_argument("--per-process", type=int, default=10000, help="sockets per client process")
    p.add_argument("--database", choices=["sqlite", "postgres"], default="postgres")
    p.add_argument("--postgres-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    p.add_argument("--poll-interval", type=float, default=1.0)
    p.add_argument("--py-spy", choices=["svg", "txt", "json"], default=None)
    p.add_argument("--py-spy-idle", action="store_true")
    p.add_argument(
        "--py-spy-gil", action="store_true", help="sample only the thread holding the GIL"
    )
    p.add_argument(
        "--notifications",
        default="",
        help="JSON merged into the servers' NOTIFICATIONS, e.g. '{\"HANDSHAKE_THREADS\": 1}'",
    )
    p.add_argument("--out", default="bench/results/handshakes")
    args = p.parse_args(argv)
    atexit.register(_cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmdline = " ".join(["python -m bench.handshakes", *(sys.argv[1:] if argv is None else argv)])
    log(f"{cmdline}; {os.cpu_count()} cores")
    started = time.time()
    with benchmark_environment(args, notifications=args.notifications) as ctx:
        code = ctx["code"]
        result = asyncio.run(amain(args, ctx))
    result = {
        "command": cmdline,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "cores": os.cpu_count(),
        "database": args.database,
        "server": args.server,
        "notifications_override": args.notifications or None,
        "code": code,
        **result,
    }
    (out / "latest.json").write_text(json.dumps(result, indent=1))
    log(
        f"signed-in {result['signed_in_per_s']}/s, anonymous {result['anonymous_per_s']}/s, "
        f"median ratio {result['ratio_median']}; written to {out / 'latest.json'}"
    )


if __name__ == "__main__":
    main()
