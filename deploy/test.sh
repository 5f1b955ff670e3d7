#!/usr/bin/env bash
# The test command: installs what it needs, then lint + the whole suite on a real Kafka broker
# (started and stopped by the test session itself) and embedded ClickHouse (chDB).
# Extra arguments go to pytest, e.g. deploy/test.sh -k ctr
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash deploy/setup.sh
echo "[test] ruff" >&2
.venv/bin/ruff check .
echo "[test] pytest" >&2
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
