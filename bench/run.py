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

This module is the entry point (options, the order of the scenarios, the result file); each
scenario has its own module: ``fanout.py`` (one kind at one size), ``longpoll_baseline.py``,
``steady.py``, with ``report.py`` (tables, ratios, plot) and ``common.py`` (client pools, load
and CPU readings, profiling, the code snapshot, database and Redis set-up), which
``restart.py`` and ``soak.py`` share.
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
import sys
import tempfile
import time
from pathlib import Path

from .common import (
    _cleanup,
    _remove_stale_temp,
    _versions,
    check_loopback,
    log,
    setup_database,
    setup_django,
    snapshot,
)
from .fanout import run_size
from .longpoll_baseline import longpoll_rows, run_longpoll
from .report import ratios, report
from .servers import (
    KINDS,
    project_env,
)
from .steady import run_steady


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


if __name__ == "__main__":
    main()
