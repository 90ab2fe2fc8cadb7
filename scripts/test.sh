#!/usr/bin/env bash
# The README's test command: installs what the tests need (once), lints, runs every test.
#   scripts/test.sh [pytest args...]
# Tests that need ../shared/data (or RETINA_DATA_DIR) skip when it is absent; browser
# tests install Debian's chromium (and the PostgreSQL audit tests Debian's postgresql) when apt-get
# is usable, and skip with the reason if not.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dev
venv="${RETINA_VENV:-.venv}"
if ! command -v chromium >/dev/null 2>&1 && [ -z "${RETINA_NO_BROWSER:-}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[test] installing Debian chromium for the browser tests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "[test] chromium could not be installed; browser tests will skip" >&2
  fi
fi
# The PostgreSQL audit tests start their own throwaway server from Debian's postgresql package
# (initdb + pg_ctl, as the postgres user); without it they skip and say why.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1 \
  && [ -z "${RETINA_NO_POSTGRES:-}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[test] installing Debian postgresql for the audit tests with several workers" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
      || echo "[test] postgresql could not be installed; the PostgreSQL audit tests will skip" >&2
  fi
fi
# The PACS round-trip test (scoring.pacs) starts a throwaway Orthanc from Debian's orthanc + orthanc-dicomweb
# on a loopback port (tests/orthanc.py); without them it skips and says why.
if ! command -v Orthanc >/dev/null 2>&1 && [ ! -x /usr/sbin/Orthanc ] && [ -z "${RETINA_NO_ORTHANC:-}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[test] installing Debian orthanc + orthanc-dicomweb for the PACS round-trip test" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null) \
      || echo "[test] orthanc could not be installed; the PACS round-trip test will skip" >&2
  fi
fi
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check . || { echo "[test] run: $venv/bin/ruff format ." >&2; exit 1; }
exec "$venv/bin/python" -m pytest "$@"
