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
# End-to-end tests wait on wall-clock deadlines; on a loaded 2-core machine one may time out.
# A test that timed out gets up to two more tries on a fresh mesh; a wrong number never does
# (only TimeoutError is retried). -rfER names every retried test in the summary.
exec .venv/bin/python -m pytest -q -rfER -p no:cacheprovider --reruns 2 --only-rerun TimeoutError "$@"
