#!/usr/bin/env bash
# Static scan of infra/ with checkov's Bicep framework: zero failed checks is the bar, and
# every skip is a "checkov:skip=CKV_...:reason" comment inside the resource it excuses.
#
#   tools/checkov.sh             scan, print failures only (creates .venv-checkov on first use)
#   tools/checkov.sh -o json     extra arguments go to checkov (tests/test_infra.py uses this)
#   tools/checkov.sh --install   only create or update .venv-checkov
#
# checkov pins many dependencies that would clash with the app's, so it lives in a venv of
# its own. --skip-download keeps the scan offline (no guideline or policy download).
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKOV_VERSION=3.3.30
VENV=.venv-checkov
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
STAMP="$VENV/.installed-$CHECKOV_VERSION"

if [ ! -f "$STAMP" ]; then
  echo "==> Installing checkov $CHECKOV_VERSION into $VENV" >&2
  log=$(mktemp)
  if ! { "$PYTHON" -m venv "$VENV" \
      && "$VENV/bin/python" -m pip install --disable-pip-version-check "checkov==$CHECKOV_VERSION"; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    rm -f "$log"
    echo "tools/checkov.sh: could not install checkov $CHECKOV_VERSION into $VENV" >&2
    exit 3
  fi
  rm -f "$log" "$VENV"/.installed-*
  touch "$STAMP"
fi

if [ "${1:-}" = "--install" ]; then
  exit 0
fi

# Without arguments, print only what failed; with them (e.g. -o json), print everything.
if [ "$#" -eq 0 ]; then
  set -- --quiet --compact
fi
exec "$VENV/bin/checkov" --directory infra --framework bicep --skip-download "$@"
