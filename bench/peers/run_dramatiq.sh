#!/usr/bin/env bash
# Dramatiq's RedisBroker against Conveyor's Redis engine: same Redis, same workload.
#
#   bench/peers/run_dramatiq.sh                  # 3 runs each, full sizes
#   bench/peers/run_dramatiq.sh --quick          # smoke sizes
#   RUNS=5 REDIS_URL=redis://10.0.0.5:6379/0 bench/peers/run_dramatiq.sh
#
# Runs alternate (dramatiq, conveyor, dramatiq, conveyor, ...), one at a time, so
# anything else loading the machine hits both sides alike. Both use 2 worker
# processes by default. Dramatiq goes into a throwaway virtualenv (DRAMATIQ_VENV,
# default /tmp/dramatiq-venv), never into Conveyor's: it is a peer to measure, not a
# dependency. Each side works under its own key prefix and deletes it afterwards.
# Reports land in OUT (default /tmp/conveyor-vs-dramatiq), with the comparison in
# comparison.txt.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DRAMATIQ_VENV="${DRAMATIQ_VENV:-/tmp/dramatiq-venv}"
DRAMATIQ_VERSION="${DRAMATIQ_VERSION:-2.2.1}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
OUT="${OUT:-/tmp/conveyor-vs-dramatiq}"
RUNS="${RUNS:-3}"
PY="${PYTHON:-python3}"
CONVEYOR_PY="${CONVEYOR_PY:-$ROOT/.venv/bin/python}"

mkdir -p "$OUT"
rm -f "$OUT"/dramatiq-*.json "$OUT"/conveyor-*.json
if ! "$DRAMATIQ_VENV/bin/python" -c "import dramatiq, hiredis, sys; sys.exit(dramatiq.__version__ != '$DRAMATIQ_VERSION')" 2>/dev/null; then
    echo "installing dramatiq[redis]==$DRAMATIQ_VERSION into $DRAMATIQ_VENV" >&2
    "$PY" -m venv "$DRAMATIQ_VENV"
    "$DRAMATIQ_VENV/bin/python" -m pip install --quiet "dramatiq[redis]==$DRAMATIQ_VERSION" "hiredis==3.5.0"
fi

for run in $(seq 1 "$RUNS"); do
    echo "== run $run/$RUNS: dramatiq (RedisBroker, 2 worker processes)" >&2
    "$DRAMATIQ_VENV/bin/python" "$HERE/dramatiq_redis.py" --url "$REDIS_URL" --runs 1 "$@" > "$OUT/dramatiq-$run.json"
    echo "== run $run/$RUNS: conveyor (Redis, 2 worker processes)" >&2
    "$CONVEYOR_PY" "$ROOT/bench/run.py" --url "$REDIS_URL?prefix=bench-$run" --only enqueue throughput latency \
        --json --runs 1 "$@" > "$OUT/conveyor-$run.json"
    "$DRAMATIQ_VENV/bin/python" "$HERE/dramatiq_redis.py" --url "$REDIS_URL" --drop-conveyor "bench-$run"
done

"$DRAMATIQ_VENV/bin/python" "$HERE/dramatiq_redis.py" \
    --conveyor-json "$OUT"/conveyor-*.json --dramatiq-json "$OUT"/dramatiq-*.json | tee "$OUT/comparison.txt"
