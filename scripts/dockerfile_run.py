"""Run the Dockerfile's steps without Docker (CI has no Docker engine), then start the image's
CMD and run its HEALTHCHECK against it.

    python scripts/dockerfile_run.py [--keep]

What it does, instruction by instruction (Dockerfile at the repository root):

- ``FROM``: a fresh virtualenv made by the running interpreter stands in for the base image's
  Python (its version is printed next to the image's);
- ``ENV``: set for every later step; ``WORKDIR``: a temporary directory stands in for its path;
- ``COPY . .``: the build context, minus ``.dockerignore``'s patterns;
- ``RUN``: each command through ``/bin/sh -c``, in the work directory, with the virtualenv first
  on ``PATH``; the image path is rewritten to the work directory. Parts of a ``&&`` chain that
  change the host's accounts or ownership (``useradd``, ``groupadd``, ``chown``) are skipped and
  listed, since they need root and would modify this machine;
- ``CMD``: started with ``DATABASE_URL`` pointing at a SQLite file in the work directory (after
  ``manage.py migrate``, as compose's ``migrate`` service does), and ``--host`` narrowed to
  127.0.0.1; then the ``HEALTHCHECK`` command must exit 0 within 30 s.

Exit status 0 when every step succeeded. Nothing is installed outside the temporary directory.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIPPED_COMMANDS = ("useradd", "groupadd", "chown")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def ignored(relative: str, patterns: list[str]) -> bool:
    parts = relative.split("/")
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        bare = pattern[3:] if pattern.startswith("**/") else pattern
        if fnmatch.fnmatch(relative, pattern) or any(fnmatch.fnmatch(p, bare) for p in parts):
            return True
    return False


def copy_context(destination: Path) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in sorted(ROOT.rglob("*")):
        relative = path.relative_to(ROOT).as_posix()
        if ignored(relative, patterns) or not path.is_file():
            continue
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def parse_env(arguments: str) -> dict[str, str]:
    env = {}
    for item in shlex.split(arguments):
        key, _, value = item.partition("=")
        env[key] = value
    return env


def rewrite(command: str, image_dir: str, stand_in: Path) -> str:
    """``command`` with the image's directory replaced by its stand-in (whole path
    components only), and ``mkdir`` of it made idempotent."""
    pattern = rf"(?<![\w/.-]){re.escape(image_dir)}(?=/|\s|$)"
    command = re.sub(pattern, str(stand_in), command)
    if command.startswith("mkdir ") and not command.startswith("mkdir -p "):
        command = "mkdir -p " + command[len("mkdir ") :]
    return command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step(title: str) -> None:
    print(f"== {title}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dockerfile-run-"))
    venv = work / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "NOTIFICATIONS_"))}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    env.pop("VIRTUAL_ENV", None)
    steps = instructions(ROOT / "Dockerfile")
    # The image's work directory, known before the first RUN: a RUN that creates it (mkdir
    # /app) must create the stand-in, never the path on this machine.
    image_workdir = next((rest for word, rest in steps if word == "WORKDIR"), "")
    workdir: Path | None = work / "app" if image_workdir else None
    cmd: list[str] = []
    healthcheck: list[str] = []
    skipped: list[str] = []
    server: subprocess.Popen | None = None
    try:
        for word, rest in steps:
            if word == "FROM":
                step(f"FROM {rest}: a virtualenv of Python {sys.version.split()[0]}")
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
                env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
            elif word == "ENV":
                env.update(parse_env(rest))
            elif word == "WORKDIR":
                if rest != image_workdir:
                    raise SystemExit(f"a second WORKDIR ({rest}) is not supported")
                assert workdir is not None
                workdir.mkdir(exist_ok=True)
            elif word == "COPY":
                step(f"COPY {rest}")
                assert workdir is not None, "COPY before WORKDIR"
                copy_context(workdir)
            elif word == "RUN":
                parts = []
                for part in rest.split("&&"):
                    command = part.strip()
                    if command.split()[0] in SKIPPED_COMMANDS:
                        skipped.append(command)
                        continue
                    if image_workdir and workdir is not None:
                        command = rewrite(command, image_workdir, workdir)
                    if workdir is not None and not workdir.exists() and "mkdir" not in command:
                        raise SystemExit(f"RUN before the work directory exists: {command}")
                    parts.append(command)
                if not parts:
                    continue
                command = " && ".join(parts)
                step(f"RUN {command}")
                cwd = workdir if workdir is not None and workdir.exists() else work
                subprocess.run(["/bin/sh", "-c", command], cwd=cwd, env=env, check=True)
            elif word == "CMD":
                cmd = json.loads(rest)
            elif word == "HEALTHCHECK":
                healthcheck = json.loads(rest.split(" CMD ", 1)[1])
            elif word in ("USER", "EXPOSE", "LABEL", "ARG"):
                continue
            else:
                raise SystemExit(f"unsupported instruction {word}")
        for command in skipped:
            print(f"-- skipped (changes the host's accounts): {command}")
        assert workdir is not None and cmd and healthcheck, "no WORKDIR, CMD or HEALTHCHECK"
        port = free_port()
        run_env = {
            **env,
            "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
            "DJANGO_SECRET_KEY": "dockerfile-run-" + os.urandom(16).hex(),
            "DJANGO_ALLOWED_HOSTS": "localhost",
            "PORT": str(port),
        }
        step("manage.py migrate (compose's migrate service)")
        subprocess.run(
            ["python", "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=workdir,
            env=run_env,
            check=True,
        )
        cmd = [("127.0.0.1" if part == "0.0.0.0" else part) for part in cmd]
        cmd[cmd.index("--port") + 1] = str(port)
        step("CMD " + " ".join(cmd))
        server = subprocess.Popen(cmd, cwd=workdir, env=run_env)
        step("HEALTHCHECK " + " ".join(healthcheck))
        deadline = time.monotonic() + 30
        while True:
            check = subprocess.run(
                healthcheck, cwd=workdir, env=run_env, capture_output=True, text=True
            )
            if check.returncode == 0:
                print("healthy")
                break
            if server.poll() is not None or time.monotonic() > deadline:
                print(check.stderr, file=sys.stderr)
                raise SystemExit("the CMD did not become healthy")
            time.sleep(0.5)
        return 0
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            server.wait(15)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
