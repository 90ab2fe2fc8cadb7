#!/usr/bin/env bash
# Create (or reuse) the project's virtual env and install one dependency group, pinned by
# requirements/constraints.txt. Idempotent: a stamp skips pip when nothing changed.
#
#   scripts/bootstrap.sh [GROUP]      GROUP: dev (default) | backend | frontend | training
#
# torch/torchvision come from PyTorch's CPU wheel index when it is reachable (slim, no
# CUDA libraries); otherwise from PyPI (CUDA build, which also runs on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
group="${1:-dev}"
venv="${RETINA_VENV:-.venv}"
py="${PYTHON:-$(command -v python3.11 || command -v python3)}"
log() { printf '[bootstrap] %s\n' "$*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv with $py ($("$py" --version))"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
stamp="$venv/.retina-$group.stamp"
want=$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  log "$group dependencies up to date"
  exit 0
fi
# Dependency groups (PEP 735) need pip >= 25.1.
"${pip[@]}" install -q --upgrade "pip>=25.1"
if [ "$group" != "frontend" ]; then
  if ! "${pip[@]}" show -q torch >/dev/null 2>&1; then
    tv=$(grep -E '^torchvision==' requirements/constraints.txt)
    t=$(grep -E '^torch==' requirements/constraints.txt)
    log "installing $t $tv (CPU wheel index, else PyPI)"
    "${pip[@]}" install -q --timeout 20 --retries 1 --index-url https://download.pytorch.org/whl/cpu "$t" "$tv" \
      || "${pip[@]}" install -q "$t" "$tv"
  fi
fi
log "installing dependency group '$group'"
"${pip[@]}" install -q --group "$group" -c requirements/constraints.txt
echo "$want" >"$stamp"
