#!/usr/bin/env bash
# Make the project runnable on a fresh machine with Python 3.11+, Java 17 and Maven:
# a virtualenv in .venv with the project and its dev tools, the hot modules compiled with mypyc,
# and the Kafka broker jars (cached).
# Idempotent and quick when nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${PYTHON:-python3}"
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' 2>/dev/null ||
  { echo "[setup] needs Python 3.11+ as \$PYTHON or python3" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing the project and its dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e ".[dev]" >&2
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# The hot modules compiled with mypyc (seconds; skipped when current). A failed build is not fatal:
# the services then run the same code as pure Python, slower (shared/compiled_modules.py).
.venv/bin/python deploy/compile_hot_modules.py >&2 || echo "[setup] warning: hot modules not compiled" >&2
bash deploy/kafka.sh fetch
