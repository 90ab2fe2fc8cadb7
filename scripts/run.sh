#!/usr/bin/env bash
# The README's run command, for a machine with Python 3.11 and no Docker:
#   creates/reuses the virtual env (scripts/bootstrap.sh backend frontend), starts the backend and
#   the frontend with the same commands as the containers, waits until the API is ready and the UI
#   is up, prints the two URLs, and stops both on Ctrl-C / SIGTERM.
#
#   scripts/run.sh
#
# Environment (all optional):
#   RETINA_BACKEND_PORT   API port (default 8000)
#   RETINA_FRONTEND_PORT  UI port (default 8501)
#   RETINA_BIND_ADDRESS   interface both listen on (default 127.0.0.1; 0.0.0.0 serves the network,
#                         as the containers do)
#   RETINA_VENV           virtual env to create/reuse (default .venv)
#   RETINA_NO_INSTALL=1   use RETINA_VENV as it is, without running the bootstrap (no network)
#   RETINA_START_TIMEOUT  seconds to wait for the backend to load its models (default 180)
#   RETINA_MODELS_DIR, RETINA_API_KEY(S), RETINA_TORCH_THREADS, WEB_CONCURRENCY, ...: passed to the
#                         backend as they are (see the README); RETINA_API_KEY reaches the UI too.
#                         Without any key on a loopback bind, RETINA_INSECURE_NO_AUTH=true is set.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${RETINA_VENV:-.venv}"
export RETINA_VENV="$venv"
backend_port="${RETINA_BACKEND_PORT:-8000}"
frontend_port="${RETINA_FRONTEND_PORT:-8501}"
bind="${RETINA_BIND_ADDRESS:-127.0.0.1}"
# where this script (and the UI) reach the services: loopback unless bound to one specific address
case "$bind" in 0.0.0.0 | :: | 127.0.0.1) host=127.0.0.1 ;; *) host="$bind" ;; esac
start_timeout="${RETINA_START_TIMEOUT:-180}"
log() { printf '[run] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ -z "${RETINA_NO_INSTALL:-}" ]; then
  scripts/bootstrap.sh backend frontend
fi
py="$venv/bin/python"
[ -x "$py" ] || die "no Python in $venv (unset RETINA_NO_INSTALL to create it)"
for tool in uvicorn streamlit; do
  [ -x "$venv/bin/$tool" ] || die "$venv/bin/$tool is missing (run scripts/bootstrap.sh backend frontend)"
done

# probe URL -> prints "STATUS DETAIL" (STATUS 0 when nothing answered; DETAIL the error body's
# "detail" when it has one). The venv's Python is the one HTTP client a fresh machine surely has.
probe() {
  "$py" - "$1" <<'EOF'
import json
import sys
import urllib.error
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        status, body = r.status, r.read(4000)
except urllib.error.HTTPError as e:
    status, body = e.code, e.read(4000)
except Exception:
    status, body = 0, b""
text = body.decode("utf-8", "replace")
try:
    text = str(json.loads(text).get("detail", text))
except (ValueError, AttributeError):
    pass
sys.stdout.write(f"{status} {text[:600]}")
EOF
}

port_free() {
  "$py" - "$1" "$2" <<'EOF'
import socket
import sys

s = socket.socket()
# as the servers do: a port whose old connections linger in TIME_WAIT is free, one with a listener is not
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

for p in "$backend_port:RETINA_BACKEND_PORT" "$frontend_port:RETINA_FRONTEND_PORT"; do
  port_free "$bind" "${p%%:*}" || die "port ${p%%:*} on $bind is in use: stop what holds it or set ${p#*:}"
done

backend_pid=""
frontend_pid=""
# shellcheck disable=SC2329  # called by the traps below
stop_children() {
  local pid
  for pid in $backend_pid $frontend_pid; do kill -TERM "$pid" 2>/dev/null || true; done
  # uvicorn finishes in-flight requests first; give both 15 s before forcing.
  for _ in $(seq 30); do
    alive=""
    for pid in $backend_pid $frontend_pid; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ -z "$alive" ] && break
    sleep 0.5
  done
  for pid in $backend_pid $frontend_pid; do
    if kill -0 "$pid" 2>/dev/null; then
      log "process $pid did not stop within 15 s of SIGTERM: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
  backend_pid=""
  frontend_pid=""
}
# shellcheck disable=SC2329  # called by the trap below
on_signal() {
  trap - INT TERM
  log "stopping backend and frontend"
  stop_children
  log "stopped"
  exit 0
}
trap on_signal INT TERM
trap stop_children EXIT

# Each child's output goes to this terminal, prefixed with its name, line by line (awk/sed would
# buffer), and unbuffered on the Python side as in the images. The prefixer ignores Ctrl-C and
# TERM: it must outlive its child (it ends at EOF), or the child's shutdown writes hit a closed pipe
# and Streamlit hangs instead of stopping.
prefix() {
  trap '' INT TERM
  while IFS= read -r line || [ -n "$line" ]; do printf '[%s] %s\n' "$1" "$line"; done
}
export PYTHONUNBUFFERED=1

# The backend refuses to start without an API key. A loopback-only run with no key configured opts out
# explicitly (the image and compose never do); a key set in the environment is always used.
if [ -z "${RETINA_API_KEY:-}" ] && [ -z "${RETINA_API_KEYS:-}" ] && [ -z "${RETINA_INSECURE_NO_AUTH:-}" ]; then
  case "$bind" in
    127.0.0.1 | localhost | ::1)
      log "no RETINA_API_KEY(S): serving without keys on loopback only (RETINA_INSECURE_NO_AUTH=true)"
      export RETINA_INSECURE_NO_AUTH=true
      ;;
  esac
fi

# The same commands as Dockerfile.backend / Dockerfile.frontend (only the bind address and ports vary).
log "starting backend on $bind:$backend_port (models: ${RETINA_MODELS_DIR:-models/})"
"$venv/bin/uvicorn" backend.main:app --host "$bind" --port "$backend_port" > >(prefix backend) 2>&1 &
backend_pid=$!

export RETINA_BACKEND_URL="${RETINA_BACKEND_URL:-http://$host:$backend_port}"
export STREAMLIT_BROWSER_GATHER_USAGE_STATS=false
log "starting frontend on $bind:$frontend_port (backend: $RETINA_BACKEND_URL)"
"$venv/bin/streamlit" run frontend/app.py --server.port "$frontend_port" --server.address "$bind" --client.toolbarMode viewer \
  --server.headless true > >(prefix frontend) 2>&1 &
frontend_pid=$!

# Wait for the API: /ready is 200 once every model is loaded, 503 (with the reason) when one could
# not be. The models load before the server answers at all, so a 503 that persists a few seconds
# is final until a restart.
models_hint="the shipped models are missing from ${RETINA_MODELS_DIR:-models/} or do not match the registry:
      restore them (git checkout -- models) or set RETINA_MODELS_DIR to a folder that has them"
ready=""
last=""
refused_since=""
deadline=$(($(date +%s) + start_timeout))
while [ "$(date +%s)" -lt "$deadline" ]; do
  kill -0 "$backend_pid" 2>/dev/null || {
    wait "$backend_pid" && rc=0 || rc=$?
    backend_pid=""
    die "the backend exited (status $rc) before it was ready; its log is above. If it names a
      checkpoint, $models_hint."
  }
  last=$(probe "http://$host:$backend_port/ready")
  case "${last%% *}" in
    200) ready=1; break ;;
    0) ;;
    *)
      refused_since="${refused_since:-$(date +%s)}"
      [ $(($(date +%s) - refused_since)) -ge 5 ] && break
      ;;
  esac
  sleep 1
done
if [ -z "$ready" ]; then
  reason="${last#* }"
  log "WARNING: the backend is running but NOT READY: ${reason:-/ready did not answer within ${start_timeout}s}"
  log "  Predictions fail with 503 until it is restarted ready; usually $models_hint."
fi

ui=""
deadline=$(($(date +%s) + 60))
while [ "$(date +%s)" -lt "$deadline" ]; do
  kill -0 "$frontend_pid" 2>/dev/null || die "the frontend exited; its log is above"
  if [ "$(probe "http://$host:$frontend_port/_stcore/health" | cut -d' ' -f1)" = 200 ]; then ui=1; break; fi
  sleep 1
done
[ -n "$ui" ] || die "the frontend did not answer /_stcore/health within 60 s"

log "RetinaScope is running"
log "  UI:  http://$host:$frontend_port"
log "  API: http://$host:$backend_port  (docs: /docs, readiness: /ready)"
log "Ctrl-C stops both."

# Stay until a signal arrives or a child dies; `sleep & wait` lets the trap run at once.
while kill -0 "$backend_pid" 2>/dev/null && kill -0 "$frontend_pid" 2>/dev/null; do
  sleep 1 &
  wait $! || true
done
# A child ended and our trap did not run. A terminal's Ctrl-C reaches the whole foreground group, and
# both servers stop cleanly on SIGINT by themselves; a shell started with SIGINT ignored (a background
# job of another script, some IDE runners) cannot trap it (POSIX), so from here an interrupt looks like
# a child that exited 0 or died of INT/TERM. That is a stop, not a failure: follow it quietly.
for child in "backend:$backend_pid" "frontend:$frontend_pid"; do
  pid="${child#*:}"
  kill -0 "$pid" 2>/dev/null && continue
  wait "$pid" && rc=0 || rc=$?
  case "$rc" in
    0 | 130 | 143) ;;
    *)
      log "error: the ${child%%:*} stopped unexpectedly (status $rc; its log is above); stopping the other"
      exit 1
      ;;
  esac
done
on_signal
