#!/usr/bin/env bash
# The run command: installs what it needs, starts a local Kafka broker (unless one answers on
# 127.0.0.1:9092), every service of the mesh, a live traffic generator, and shows live results.
# Ctrl-C stops everything this script started. Logs: data/logs/<service>.log
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash deploy/setup.sh

SERVICES="${SERVICES:-ingest ctr warehouse engagement anomaly alerting}"
mkdir -p data/logs
started_broker=0
pids=()

cleanup() {
  trap - EXIT INT TERM
  echo; echo "[run] stopping the mesh" >&2
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$started_broker" = 1 ]; then bash deploy/kafka.sh stop; fi
}
trap cleanup EXIT INT TERM

if ! bash deploy/kafka.sh status >/dev/null 2>&1; then
  bash deploy/kafka.sh start
  started_broker=1
fi

# Runs one service's worker and starts it again when it stops on a failure: a worker stops on
# any error it cannot handle (crash-only, shared/app.py) and picks up from its commits and
# changelogs, as `restart: unless-stopped` does in docker-compose.yml.
supervise() {
  local svc=$1 child=0 status
  trap 'kill "$child" 2>/dev/null; wait "$child" 2>/dev/null; exit 0' TERM INT
  while true; do
    .venv/bin/faust -A "services.$svc" worker -l info >>"data/logs/$svc.log" 2>&1 &
    child=$!
    status=0
    wait "$child" || status=$?
    if [ "$status" = 0 ]; then exit 0; fi
    echo "[run] $svc stopped (exit $status), starting it again in 2 s" >&2
    sleep 2
  done
}

for svc in $SERVICES; do
  : >"data/logs/$svc.log"
  supervise "$svc" &
  pids+=($!)
  echo "[run] $svc started (pid $!, log data/logs/$svc.log)" >&2
done
.venv/bin/python -m services.generator --live >"data/logs/generator.log" 2>&1 &
pids+=($!)
echo "[run] generator started: live traffic at EVENT_RATE (log data/logs/generator.log)" >&2

.venv/bin/python deploy/live_view.py
