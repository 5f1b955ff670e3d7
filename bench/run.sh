#!/usr/bin/env bash
# The mesh against its limits (raw aiokafka, plain Python) and its peer (Quix Streams), in one run.
#
#   bash bench/run.sh --quick                         # smoke run, ~300k events, ~5 min
#   bash bench/run.sh                                 # default: 5M events pre-loaded, < 15 min
#   bash bench/run.sh --bootstrap 127.0.0.1:9092      # use a running broker (else one is started)
#   bash bench/run.sh --soak-minutes 10               # the 10-minute memory soak
#   bash bench/run.sh --help                          # every option
#
# The project's own venv runs the mesh, the limits and the orchestration: $PYTHON if set, else
# .venv, made or brought up to date first by deploy/setup.sh (quick when current; on a fresh clone
# it installs the project, compiles the hot modules and fetches the broker jars, as the README's
# two commands do). The peer (quixstreams), matplotlib and py-spy live in bench/.venv, created here
# on first use: they are benchmark tools, not project dependencies.
# Results: bench/out/mesh_bench-latest.{json,png,md}.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ -z "${PYTHON:-}" ]; then
  bash deploy/setup.sh
  PYTHON="$ROOT/.venv/bin/python"
fi

BENCH_VENV="$ROOT/bench/.venv"
BASE_PY="$(command -v python3.11 || command -v python3)"
if [ ! -x "$BENCH_VENV/bin/python" ] || ! "$BENCH_VENV/bin/python" -c "import quixstreams, matplotlib" 2>/dev/null; then
  echo "[bench] creating $BENCH_VENV (quixstreams, matplotlib, py-spy)" >&2
  "$BASE_PY" -m venv "$BENCH_VENV"
  "$BENCH_VENV/bin/pip" install -q --disable-pip-version-check \
    "quixstreams>=3.20,<4" "matplotlib>=3.8" "py-spy>=0.4" "orjson>=3.10"
fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m bench.mesh_bench "$@"
