"""The docs' runnable examples run, so that they cannot rot (docs/testing.md, "Docs that run").

In README.md and docs/*.md, a fenced block whose info string is

- ``python test`` is executed with ``exec`` against the test database, in one namespace per
  file shared by its blocks in order. The namespace holds ``BASE`` (the live server's
  origin), ``TOKEN``, ``SCOPED``, ``SLOW`` (token values, below) and the users ``alice`` and
  ``bob`` and the group ``editors``.
- ``sh test`` is run by bash (``set -euo pipefail``) in the repository's root, against a live
  server (daphne) on the test database, with ``$BASE``, ``$TOKEN``, ``$SCOPED`` and ``$SLOW``
  in its environment and this interpreter's ``python`` first on ``PATH``. If the next block
  is tagged ``output``, the block's standard output must match it: line endings are
  normalised, trailing spaces dropped, and ``...`` in the expected text matches anything
  (within a line or across lines).

The fixtures every file gets: users ``alice`` and ``bob`` (``bob`` in the group ``editors``),
the public topic ``billing``, and three tokens: ``TOKEN`` (every scope, the default rate),
``SCOPED`` (scope ``users`` only) and ``SLOW`` (every scope, 1 request a minute).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from notifications.api import tokens
from notifications.models import Topic

from .server import ROOT, ServerProcess, child_env
from .support import require_service

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.server]

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass
class Block:
    path: Path
    line: int
    kind: str  # "python" or "sh"
    code: str
    expected: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def runnable_blocks(path: Path) -> list[Block]:
    """The blocks of ``path`` tagged ``python test`` or ``sh test``, with their expected
    ``output`` blocks."""
    text = path.read_text()
    blocks: list[Block] = []
    previous_end = None
    for match in FENCE.finditer(text):
        words = match[1].split()
        line = text.count("\n", 0, match.start()) + 1
        if words == ["output"]:
            between = text[previous_end : match.start()] if previous_end is not None else "x"
            if (
                blocks
                and blocks[-1].kind == "sh"
                and blocks[-1].expected is None
                and not between.strip()
            ):
                blocks[-1].expected = match[2]
        elif len(words) == 2 and words[1] == "test" and words[0] in ("python", "sh"):
            blocks.append(Block(path, line, words[0], match[2]))
        previous_end = match.end()
    return blocks


def matches(expected: str, actual: str) -> bool:
    def normal(text: str) -> str:
        lines = text.replace("\r\n", "\n").split("\n")
        return "\n".join(line.rstrip() for line in lines).strip("\n")

    pattern = ".*?".join(re.escape(part) for part in normal(expected).split("..."))
    return re.fullmatch(pattern, normal(actual), re.DOTALL) is not None


FILES = [path for path in DOCS if runnable_blocks(path)]


def test_the_runner_finds_blocks_and_matches_output():
    assert {path.name for path in FILES} >= {"api.md", "protocol.md"}
    assert matches('HTTP/1.1 201 Created\n...\n{"id": ..., "recipients": 1}\n',
                   'HTTP/1.1 201 Created\r\nA: b\r\n\r\n{"id": 7, "recipients": 1}')  # fmt: skip
    assert not matches('{"id": ..., "recipients": 1}', '{"id": 7, "recipients": 2}')


@pytest.fixture
def site():
    """The fixtures the examples rely on (see the module docstring)."""
    users = get_user_model().objects
    alice = users.create_user("alice", password="alice-password")
    bob = users.create_user("bob", password="bob-password")
    editors = Group.objects.create(name="editors")
    bob.groups.add(editors)
    Topic.objects.create(name="Billing", slug="billing")
    return {
        "alice": alice,
        "bob": bob,
        "editors": editors,
        "TOKEN": tokens.create_token("docs")[1],
        "SCOPED": tokens.create_token("docs-scoped", scopes=["users"])[1],
        "SLOW": tokens.create_token("docs-slow", rate=1)[1],
    }


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_runnable_examples(path, site):
    if any(block.kind == "sh" and "curl" in block.code for block in runnable_blocks(path)):
        require_service(
            "curl",
            shutil.which("curl") is not None,
            "curl is missing (the HTTP examples run it): apt-get install curl",
        )
    with ServerProcess() as server:
        namespace = {**site, "BASE": server.origin, "__name__": "docs_example"}
        env = child_env(
            BASE=server.origin,
            TOKEN=site["TOKEN"],
            SCOPED=site["SCOPED"],
            SLOW=site["SLOW"],
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        for block in runnable_blocks(path):
            if block.kind == "python":
                # Padded so that a traceback's line numbers are the Markdown file's.
                code = "\n" * block.line + block.code
                exec(compile(code, str(block.path), "exec"), namespace)
                continue
            result = subprocess.run(
                ["bash", "-c", "set -euo pipefail\n" + block.code],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, (
                f"{block.where}: exit {result.returncode}\n{result.stderr}"
            )
            if block.expected is not None:
                assert matches(block.expected, result.stdout), (
                    f"{block.where}: output differs\n--- expected\n{block.expected}\n"
                    f"--- actual\n{result.stdout}"
                )
