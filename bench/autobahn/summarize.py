"""Summarize an Autobahn|Testsuite fuzzingclient report (``index.json``).

``python3 bench/autobahn/summarize.py REPORTS/index.json [--allow-failed 1.1.1,6.1.*] [--no-check]``

Prints, per agent, how many cases ended in each behavior (OK, NON-STRICT, INFORMATIONAL,
UNIMPLEMENTED, FAILED), the same for the closing behavior, and every case that is not plain OK
(INFORMATIONAL ones only with ``--verbose``) with its behavior and the reason Autobahn gives,
read from the case's own report file next to ``index.json``.

``wstest`` exits 0 even when cases fail, so this is what decides. Exit status 1 when a case
FAILED that ``--allow-failed`` does not name (``fnmatch`` patterns, comma-separated), when a case
of the spec is missing from the report (the connection failed: the server went away), or when
the report is missing; 0 otherwise. ``--no-check`` only prints.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
HELLO = re.compile(r'"type":\s*"hello"')


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def case_report(report_dir: Path, entry: dict) -> dict:
    try:
        return json.loads((report_dir / entry["reportfile"]).read_text())
    except (OSError, ValueError, KeyError):
        return {}


def short(events: list) -> str:
    """Autobahn's event list, e.g. ``[message 'Hello'(13), pong, timeout A]``, kept short."""
    parts = []
    for event in events[:6]:
        kind, *rest = event
        if kind == "message":
            text = str(rest[0]) if rest else ""
            shown = text[:24] + ("..." if len(text) > 24 else "")
            parts.append(f"{'binary' if rest[1:] and rest[1] else 'text'} {shown!r}({len(text)})")
        else:
            parts.append(" ".join([kind, *(str(r)[:12] for r in rest)]).strip())
    if len(events) > 6:
        parts.append(f"... {len(events) - 6} more")
    return "[" + ", ".join(parts) + "]"


def explain(case: dict, behavior: str) -> list[str]:
    """Why the case ended as it did: the expectation it missed and what was received."""
    if not case:
        return ["(case report missing)"]
    lines = [str(case.get("result", ""))]
    expected = case.get("expected") or {}
    if behavior in ("FAILED", "NON-STRICT") and "OK" in expected:
        received = short(case.get("received", []))
        lines.append(f"expected (OK): {short(expected['OK'])}  received: {received}")
    close = case.get("remoteCloseCode")
    unclean = case.get("wasNotCleanReason")
    lines.append(
        f"close: {case.get('resultClose', '')} (server code {close},"
        f" clean={case.get('wasClean')}{', ' + unclean if unclean else ''})"
    )
    return lines


def shape(case: dict, ignore_hello: bool) -> list[str]:
    """The events of a case with message payloads left out (and ``hello`` frames dropped)."""
    out = []
    for event in case.get("received", []):
        if event[0] == "message":
            if ignore_hello and HELLO.search(str(event[1])):
                continue
            out.append("message")
        else:
            out.append(event[0])
    return out


def expected_cases(report_dir: Path) -> int | None:
    """How many cases wstest said it would run (its log), when the log is there."""
    log = report_dir / "wstest.log"
    try:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("Ok, will run ") and " test cases" in line:
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index", type=Path, help="index.json, or the directory holding it")
    parser.add_argument(
        "--allow-failed", default="", help="comma-separated case ids (fnmatch) allowed to FAIL"
    )
    parser.add_argument("--no-check", action="store_true", help="print only; exit 0")
    parser.add_argument("-v", "--verbose", action="store_true", help="list INFORMATIONAL too")
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="OTHER",
        help="another report (index.json or its directory): list the cases whose events differ"
        " in shape (messages counted, payloads ignored, hello frames dropped) or in closing",
    )
    args = parser.parse_args(argv)

    index = args.index / "index.json" if args.index.is_dir() else args.index
    if not index.exists():
        print(f"no report at {index}", file=sys.stderr)
        return 0 if args.no_check else 1
    report_dir = index.parent
    allowed = [p.strip() for p in args.allow_failed.split(",") if p.strip()]
    data = json.loads(index.read_text())
    status = 0
    shown = {"FAILED", "NON-STRICT", "UNIMPLEMENTED"}
    if args.verbose:
        shown.add("INFORMATIONAL")

    for agent, cases in sorted(data.items()):
        ids = sorted(cases, key=case_key)
        behavior = Counter(cases[c]["behavior"] for c in ids)
        closing = Counter(cases[c]["behaviorClose"] for c in ids)
        print(f"agent {agent}: {len(ids)} cases")
        print("  behavior:       " + "  ".join(f"{b} {behavior.get(b, 0)}" for b in BEHAVIORS))
        others = sorted(set(behavior) - set(BEHAVIORS))
        if others:
            print("  other behavior: " + "  ".join(f"{b} {behavior[b]}" for b in others))
        print("  close behavior: " + "  ".join(f"{b} {n}" for b, n in sorted(closing.items())))
        expected = expected_cases(report_dir)
        if expected is not None and expected != len(ids):
            print(f"  MISSING: wstest planned {expected} cases, the report has {len(ids)}")
            status = 1

        listed = [
            c for c in ids if cases[c]["behavior"] in shown or cases[c]["behaviorClose"] in shown
        ]
        if listed and not args.compare:
            print("  cases not OK:")
        for c in [] if args.compare else listed:
            entry = cases[c]
            flag = ""
            if not args.no_check and "FAILED" in (entry["behavior"], entry["behaviorClose"]):
                if any(fnmatch(c, pattern) for pattern in allowed):
                    flag = "  [known]"
                else:
                    flag = "  [UNEXPECTED]"
                    status = 1
            print(f"    {c:<8} {entry['behavior']} / close {entry['behaviorClose']}{flag}")
            for line in explain(case_report(report_dir, entry), entry["behavior"]):
                print(f"             {line}")
        if args.compare:
            status |= compare(report_dir, agent, cases, args.compare)
        slowest = sorted(ids, key=lambda c: cases[c]["duration"], reverse=True)[:3]
        print("  slowest: " + ", ".join(f"{c} {cases[c]['duration']} ms" for c in slowest))
    return 0 if args.no_check else status


def compare(report_dir: Path, agent: str, cases: dict, other: Path) -> int:
    """Print the cases whose event shape or closing differs from the other report's."""
    other_index = other / "index.json" if other.is_dir() else other
    if not other_index.exists():
        print(f"  compare: no report at {other_index}")
        return 1
    (other_agent, other_cases), *_ = json.loads(other_index.read_text()).items()
    print(
        f"  compared with {other_agent} (hello frames dropped, payloads ignored):"
        f" behavior here {dict(Counter(cases[c]['behavior'] for c in cases))}"
    )
    differ = 0
    for c in sorted(cases, key=case_key):
        if c not in other_cases:
            print(f"    {c:<8} not in {other_agent}")
            differ += 1
            continue
        mine, theirs = cases[c], other_cases[c]
        a = shape(case_report(report_dir, mine), ignore_hello=True)
        b = shape(case_report(other_index.parent, theirs), ignore_hello=True)
        close_a = (mine["behaviorClose"], mine["remoteCloseCode"])
        close_b = (theirs["behaviorClose"], theirs["remoteCloseCode"])
        if a != b or close_a != close_b:
            differ += 1
            print(f"    {c:<8} here {a} close {close_a}; {other_agent} {b} close {close_b}")
    print(f"  {differ} of {len(cases)} cases differ from {other_agent} in shape or closing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
