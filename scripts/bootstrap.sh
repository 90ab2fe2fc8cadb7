#!/usr/bin/env bash
# Create (or reuse) the project's virtual env and install dependency groups, pinned by
# requirements/constraints.txt. Idempotent: a stamp skips pip when nothing changed.
#
#   scripts/bootstrap.sh [GROUP...]   GROUP: dev (default) | backend | frontend | training | score | scale
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
    cpu_index=https://download.pytorch.org/whl/cpu
    log "installing $t $tv from PyTorch's CPU wheel index ($cpu_index)"
    # pip's own "ERROR: Could not find a version..." would read as a failure and then be followed by a
    # silent 3 GB download: keep its output, and say what happens instead.
    cpu_log="$(mktemp)"
    if "${pip[@]}" install -q --timeout 20 --retries 1 --index-url "$cpu_index" "$t" "$tv" >"$cpu_log" 2>&1; then
      rm -f "$cpu_log"
    else
      log "the CPU wheel index is unreachable or has no $t / $tv (pip said: $(grep -m1 -E 'ERROR|error' "$cpu_log" || tail -n1 "$cpu_log"))"
      log "installing the PyPI build instead: it bundles the CUDA libraries (about 3 GB to download) and also runs on CPU"
      rm -f "$cpu_log"
      "${pip[@]}" install -q "$t" "$tv"
    fi
  fi
fi
log "installing dependency groups: $groups"
group_args=()
for g in "$@"; do group_args+=(--group "$g"); done
"${pip[@]}" install -q "${group_args[@]}" -c requirements/constraints.txt
echo "$want" >"$stamp"
