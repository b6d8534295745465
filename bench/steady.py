"""The steady-load scenario: signed-in users, a constant rate of targeted events, latency and
CPU (``--steady``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

from .common import ClientPool, _children, _r, flush_redis, log, pct, start_profiler, stop_profiler
from .servers import (
    ServerGroup,
)

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
