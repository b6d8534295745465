#!/usr/bin/env bash
# WebSocket protocol conformance: Autobahn|Testsuite's fuzzing client against the production
# server configuration (see bench/autobahn/README.md and docs/conformance.md).
#
#   bench/autobahn/run.sh [TARGET...]     TARGET as below, or all (the default)
#
#   daphne         bench.autobahn.echo_asgi on daphne, production options, /ws/echo/
#   uvicorn        bench.autobahn.echo_asgi on uvicorn (websockets, no deflate), /ws/echo/
#   daphne-fast    the same on daphne, /ws/echo/fast/ (text echoed by the hub's fast writer)
#   uvicorn-fast   the same on uvicorn, /ws/echo/fast/
#   uvicorn-sansio /ws/echo/ on uvicorn --ws websockets-sansio (the successor of --ws websockets)
#   notifications  project.asgi:application on daphne exactly as in production,
#                  /ws/notifications/ (echo cases fail by design; the server must survive)
#
# Environment: AUTOBAHN_CASES (JSON list, default cases 1-7), AUTOBAHN_WITH_9=1 (adds the 9.*
# limits and performance cases: about 2 more minutes for daphne), AUTOBAHN_EXCLUDE (JSON list
# of cases to leave out), AUTOBAHN_TIMEOUT (seconds per target, default 1200), AUTOBAHN_REPORTS
# (report folder, default .autobahn/reports).
#
# Idempotent: makes the Python 2.7 virtualenv under .autobahn/ when missing. Reports go to
# .autobahn/reports/TARGET/ (index.json, HTML, server.log, wstest.log), never into git.
# Exit status 0 when every target ran all its cases, its server stayed up and answered
# afterwards, its log shows no application error (and, for notifications, no socket left
# attached to the hub), and no case FAILED outside the documented list for that target
# (KNOWN_* below); 1 otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
WORK="$ROOT/.autobahn"
PY3="${PY3:-$ROOT/.venv/bin/python}"
PY27="${PY27:-/root/.pyenv/versions/2.7.18/bin/python}"
WSTEST="$WORK/py27/bin/wstest"
TIMEOUT="${AUTOBAHN_TIMEOUT:-1200}"
REPORTS="${AUTOBAHN_REPORTS:-$WORK/reports}"

# Cases that fail for a known, documented reason (docs/conformance.md). Anything else that
# FAILS makes the run fail.
# daphne 4.2.3 drops an empty message the application sends (`if message.get("text")`):
# 1.1.1, 1.2.1, 6.1.1 and 6.1.2 failed until notifications.realtime.daphne_compat worked
# around it (docs/conformance.md).
KNOWN_DAPHNE=""
KNOWN_DAPHNE_FAST=""
KNOWN_UVICORN=""
# websockets' sans-I/O protocol answers a close frame inside a fragmented message with 1002.
KNOWN_UVICORN_SANSIO="7.1.5"
# /ws/notifications/ is not an echo endpoint: compared, not enforced (--no-check).

targets=("$@")
if ((${#targets[@]} == 0)) || [[ " ${targets[*]} " == *" all "* ]]; then
  targets=(daphne uvicorn daphne-fast uvicorn-fast uvicorn-sansio notifications)
fi

log() { printf '== %s\n' "$*"; }

# --- tools ------------------------------------------------------------------------------------
if [[ ! -x "$PY3" ]]; then
  echo "no project virtualenv at $PY3: run 'make install' first" >&2
  exit 1
fi
if [[ ! -x "$WSTEST" ]]; then
  log "creating the Python 2.7 virtualenv for Autobahn|Testsuite in $WORK/py27"
  [[ -x "$PY27" ]] || { echo "Python 2.7 not found at $PY27 (set PY27)" >&2; exit 1; }
  mkdir -p "$WORK"
  if [[ ! -x "$WORK/bootstrap/bin/virtualenv" ]]; then
    python3 -m venv "$WORK/bootstrap"
    # virtualenv 20.22 dropped support for creating Python 2 environments.
    "$WORK/bootstrap/bin/pip" install --quiet 'virtualenv<20.22'
  fi
  rm -rf "$WORK/py27"
  "$WORK/bootstrap/bin/virtualenv" --quiet -p "$PY27" "$WORK/py27"
  "$WORK/py27/bin/pip" install --quiet --disable-pip-version-check 'autobahntestsuite==25.10.1'
fi
if [[ " ${targets[*]} " == *" uvicorn "* ]] && ! "$PY3" -c "import uvicorn, websockets" 2>/dev/null; then
  log "installing uvicorn[standard] into the project virtualenv"
  "$PY3" -m pip install --quiet 'uvicorn[standard]'
fi

# --- production-like settings -----------------------------------------------------------------
export DJANGO_SETTINGS_MODULE=project.settings
export DJANGO_DEBUG=0
export DJANGO_ALLOWED_HOSTS=127.0.0.1,localhost
export DJANGO_SECRET_KEY="${DJANGO_SECRET_KEY:-autobahn-$("$PY3" -c 'import secrets; print(secrets.token_urlsafe(40))')}"
# The run counts ws.connect and ws.disconnect lines, logged at DEBUG.
export NOTIFICATIONS_LOG_LEVEL=DEBUG
# A scratch database of its own (the consumer of /ws/notifications/ reads it on connect).
export DATABASE_URL="${AUTOBAHN_DATABASE_URL:-sqlite:///$WORK/conformance.sqlite3}"
unset REDIS_URL  # in-memory channel layer: one process, nothing else to run
export PYTHONUNBUFFERED=1
"$PY3" manage.py migrate --noinput >/dev/null

cases="${AUTOBAHN_CASES:-[\"1.*\", \"2.*\", \"3.*\", \"4.*\", \"5.*\", \"6.*\", \"7.*\"]}"
exclude="[]"
if [[ "${AUTOBAHN_WITH_9:-0}" == 1 ]]; then
  cases="${cases%]}, \"9.*\"]"
  # Over daphne's default --websocket-max-message-size (1 MiB): 4-16 MiB messages. Over the
  # websockets library's 4096-fragment cap (uvicorn): 4 MiB in 64-1024 byte frames.
  KNOWN_DAPHNE+=",9.1.[456],9.2.[456],9.3.*,9.4.*,9.7.1,9.8.1"
  KNOWN_DAPHNE_FAST+=",9.1.[456],9.2.[456],9.3.*,9.4.*,9.8.1"
  KNOWN_UVICORN+="${KNOWN_UVICORN:+,}9.3.[123],9.4.[123]"
  KNOWN_UVICORN_SANSIO+=",9.3.[123],9.4.[123]"
fi
exclude="${AUTOBAHN_EXCLUDE:-$exclude}"

free_port() {
  "$PY3" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {  # PORT PID: wait until the server listens (or died)
  for _ in $(seq 1 150); do
    kill -0 "$2" 2>/dev/null || return 1
    "$PY3" -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.2).close()" \
      2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}

healthy() {  # PORT: one more WebSocket handshake and a HTTP request still work
  "$PY3" - "$1" "$2" <<'EOF'
import asyncio, sys, urllib.request
from websockets.asyncio.client import connect

port, path = sys.argv[1], sys.argv[2]

async def main():
    async with connect(f"ws://127.0.0.1:{port}{path}", open_timeout=5, close_timeout=2) as ws:
        if "/echo/" in path:
            await ws.send("still there?")
            assert await asyncio.wait_for(ws.recv(), 5) == "still there?"
        else:
            await asyncio.wait_for(ws.recv(), 5)  # the hello frame

asyncio.run(main())
req = urllib.request.Request(
    f"http://127.0.0.1:{port}/healthz",
    headers={"Host": "127.0.0.1", "X-Forwarded-Proto": "https"},
)
with urllib.request.urlopen(req, timeout=5) as response:
    assert response.status == 200, response.status
EOF
}

status=0
for target in "${targets[@]}"; do
  port="$(free_port)"
  daphne=("$ROOT/.venv/bin/daphne" -e "tcp:port=$port:interface=127.0.0.1:backlog=4096"
          --proxy-headers)
  uvicorn=("$ROOT/.venv/bin/uvicorn" --host 127.0.0.1 --port "$port" --backlog 4096
           --ws websockets --ws-per-message-deflate false --proxy-headers --lifespan off
           --http notifications.realtime.uvicorn_http:HttpToolsProtocol)
  echo_app=bench.autobahn.echo_asgi:application
  case "$target" in
    daphne)
      path=/ws/echo/; check=(--allow-failed "$KNOWN_DAPHNE"); server=("${daphne[@]}" "$echo_app") ;;
    uvicorn)
      path=/ws/echo/; check=(--allow-failed "$KNOWN_UVICORN"); server=("${uvicorn[@]}" "$echo_app") ;;
    daphne-fast)
      path=/ws/echo/fast/; check=(--allow-failed "$KNOWN_DAPHNE_FAST")
      server=("${daphne[@]}" "$echo_app") ;;
    uvicorn-fast)
      path=/ws/echo/fast/; check=(--allow-failed "$KNOWN_UVICORN"); server=("${uvicorn[@]}" "$echo_app") ;;
    uvicorn-sansio)  # --ws websockets is deprecated in uvicorn 0.5x in favour of this one
      path=/ws/echo/; check=(--allow-failed "$KNOWN_UVICORN_SANSIO")
      server=("${uvicorn[@]/#websockets/websockets-sansio}" "$echo_app") ;;
    notifications)
      path=/ws/notifications/; check=(--no-check); server=("${daphne[@]}" project.asgi:application)
      # Same events as the echo endpoint, hello frames and payloads aside?
      [[ -f "$REPORTS/daphne/index.json" ]] && check+=(--compare "$REPORTS/daphne") ;;
    *)
      echo "unknown target $target (daphne uvicorn daphne-fast uvicorn-fast uvicorn-sansio" \
        "notifications all)" >&2
      exit 2 ;;
  esac
  out="$REPORTS/$target"
  rm -rf "$out"
  mkdir -p "$out"
  log "$target: ${server[*]}"
  "${server[@]}" >"$out/server.log" 2>&1 &
  pid=$!
  if ! wait_port "$port" "$pid"; then
    echo "$target: the server did not start; see $out/server.log" >&2
    tail -n 20 "$out/server.log" >&2
    kill "$pid" 2>/dev/null || true
    status=1
    continue
  fi
  cat >"$out/fuzzingclient.json" <<EOF
{
  "outdir": "$out",
  "servers": [{"agent": "$target", "url": "ws://127.0.0.1:$port$path"}],
  "cases": $cases,
  "exclude-cases": $exclude,
  "exclude-agent-cases": {}
}
EOF
  log "$target: wstest -m fuzzingclient -s $out/fuzzingclient.json"
  started=$SECONDS
  if ! (cd "$out" && timeout "$TIMEOUT" "$WSTEST" -m fuzzingclient -s fuzzingclient.json \
        >"$out/wstest.log" 2>&1); then
    echo "$target: wstest did not finish (timeout ${TIMEOUT}s or error); see $out/wstest.log" >&2
    status=1
  fi
  log "$target: wstest took $((SECONDS - started)) s"
  alive=1
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "$target: THE SERVER DIED during the run; see $out/server.log" >&2
    alive=0
    status=1
  elif ! healthy "$port" "$path"; then
    echo "$target: the server no longer answers a WebSocket handshake and /healthz" >&2
    status=1
  else
    log "$target: server still up and answering (WebSocket and /healthz)"
  fi
  sleep 1  # let the last disconnects reach the application
  ((alive)) && { kill -TERM "$pid" 2>/dev/null || true; }
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  grep -h '^autobahn fast echo:' "$out/server.log" | sed "s/^/== $target: /" || true
  after_close=$(grep -c '^autobahn echo: send after close' "$out/server.log" || true)
  ((after_close == 0)) || log "$target: sends refused after close (caught by the echo): $after_close"
  errors=$(grep -c 'Exception inside application\|Exception in ASGI application' "$out/server.log" || true)
  # uvicorn's websockets-sansio logs every invalid UTF-8 text frame with a traceback at ERROR:
  # the server refusing bad input, not a crash. Any other traceback counts.
  # The consumer's "ws.error ... the socket failed" (a send to a client that has just gone)
  # carries its traceback at DEBUG, the level this run logs at: expected, not counted either.
  read -r tracebacks noise gone < <(awk '/ERROR/ || / ws\.error / { last = $0 }
    /^Traceback/ {
      if (last ~ /Invalid UTF-8 sequence received from client/) n++
      else if (last ~ / ws\.error .*the socket failed/) g++
      else t++
    }
    END { print t + 0, n + 0, g + 0 }' "$out/server.log")
  log "$target: application errors in server.log: $errors (other tracebacks: $tracebacks)"
  ((gone == 0)) || log "$target: sends to clients already gone (ws.error, DEBUG traceback): $gone"
  ((noise == 0)) || log "$target: invalid UTF-8 frames logged by the server with a traceback: $noise"
  ((tracebacks == 0 && errors == 0)) || status=1
  if [[ "$target" == notifications ]]; then
    # The consumer logs ws.connect and ws.disconnect; a socket without the second stays
    # attached to the hub (and counts against the per-user cap) after it is gone.
    connects=$(grep -c 'ws\.connect ' "$out/server.log" || true)
    disconnects=$(grep -c 'ws\.disconnect ' "$out/server.log" || true)
    log "$target: ws.connect $connects, ws.disconnect $disconnects"
    ((connects == disconnects)) || { log "$target: $((connects - disconnects)) sockets never detached"; status=1; }
  fi
  "$PY3" "$ROOT/bench/autobahn/summarize.py" "$out/index.json" "${check[@]}" || status=1
done
exit "$status"
