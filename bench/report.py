"""The report: ratios against the bare server, the tables of latest.md and the fan-out plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .common import _r, log
from .longpoll_baseline import longpoll_table
from .servers import (
    KINDS,
)

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
