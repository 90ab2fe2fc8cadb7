#!/usr/bin/env bash
# Create (or reuse) the project's virtual env and install dependency groups, pinned by
# requirements/constraints.txt. Idempotent: a stamp skips pip when nothing changed.
#
#   scripts/bootstrap.sh [GROUP...]   GROUP: dev (default) | backend | frontend | training
#                                     (several at once, e.g. `backend frontend` for scripts/run.sh)
#
# torch/torchvision come from PyTorch's CPU wheel index when it is reachable (slim, no
# CUDA libraries); otherwise from PyPI (CUDA build, which also runs on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -eq 0 ]; then set -- dev; fi
groups="$*"
venv="${RETINA_VENV:-.venv}"
py="${PYTHON:-$(command -v python3.11 || command -v python3)}"
log() { printf '[bootstrap] %s\n' "$*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv with $py ($("$py" --version))"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
stamp="$venv/.retina-$(IFS=+; echo "$*").stamp"
want=$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16)
# dev includes every other group, so a current dev install satisfies any request.
for s in "$stamp" "$venv/.retina-dev.stamp"; do
  if [ -f "$s" ] && [ "$(cat "$s")" = "$want" ]; then
    log "$groups dependencies up to date"
    exit 0
  fi
done
# Dependency groups (PEP 735) need pip >= 25.1.
"${pip[@]}" install -q --upgrade "pip>=25.1"
if [ "$groups" != "frontend" ]; then
  if ! "${pip[@]}" show -q torch >/dev/null 2>&1; then
    tv=$(grep -E '^torchvision==' requirements/constraints.txt)
    t=$(grep -E '^torch==' requirements/constraints.txt)
    log "installing $t $tv (CPU wheel index, else PyPI)"
    "${pip[@]}" install -q --timeout 20 --retries 1 --index-url https://download.pytorch.org/whl/cpu "$t" "$tv" \
      || "${pip[@]}" install -q "$t" "$tv"
  fi
fi
log "installing dependency groups: $groups"
group_args=()
for g in "$@"; do group_args+=(--group "$g"); done
"${pip[@]}" install -q "${group_args[@]}" -c requirements/constraints.txt
echo "$want" >"$stamp"
