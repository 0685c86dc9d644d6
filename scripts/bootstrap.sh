#!/usr/bin/env bash
# Create .venv and install hvmigrate into it (editable). Idempotent: a second run only checks.
# Usage: scripts/bootstrap.sh [EXTRAS]    e.g. scripts/bootstrap.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "hvmigrate needs Python 3.11 or newer ($python is $("$python" --version 2>&1))" >&2
  exit 2
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.hvmigrate-installed-${extras:-base}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
