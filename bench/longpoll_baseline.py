"""The long-poll baseline (``ours-longpoll``): our WebSocket server and the long-poll server at
one size, and its table."""

from __future__ import annotations

import argparse
from typing import Any

from .common import _r, log
from .fanout import run_size


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
