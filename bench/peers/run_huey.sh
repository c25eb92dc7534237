#!/usr/bin/env bash
# Huey's SqliteHuey against Conveyor on this machine: same workload, same sizes.
#
#   bench/peers/run_huey.sh                    # 3 runs each, full sizes
#   bench/peers/run_huey.sh --quick            # smoke sizes
#   RUNS=5 bench/peers/run_huey.sh
#
# Runs alternate (huey, conveyor, huey, conveyor, ...), one run at a time, so that
# anything else loading the machine hits both sides alike. Huey goes into a
# throwaway virtualenv (HUEY_VENV, default /tmp/huey-venv), never into Conveyor's:
# it is a peer to measure, not a dependency. Reports land in OUT (default
# /tmp/conveyor-vs-huey), with the comparison in comparison.txt.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
HUEY_VENV="${HUEY_VENV:-/tmp/huey-venv}"
HUEY_VERSION="${HUEY_VERSION:-3.5.4}"
OUT="${OUT:-/tmp/conveyor-vs-huey}"
RUNS="${RUNS:-3}"
PY="${PYTHON:-python3}"
CONVEYOR_PY="${CONVEYOR_PY:-$ROOT/.venv/bin/python}"

mkdir -p "$OUT"
rm -f "$OUT"/huey-*.json "$OUT"/conveyor-*.json
if ! "$HUEY_VENV/bin/python" -c "import huey, sys; sys.exit(huey.__version__ != '$HUEY_VERSION')" 2>/dev/null; then
    echo "installing huey==$HUEY_VERSION into $HUEY_VENV" >&2
    "$PY" -m venv "$HUEY_VENV"
    "$HUEY_VENV/bin/python" -m pip install --quiet "huey==$HUEY_VERSION"
fi

for run in $(seq 1 "$RUNS"); do
    echo "== run $run/$RUNS: huey (SqliteHuey, 2 worker processes)" >&2
    "$HUEY_VENV/bin/python" "$HERE/huey_sqlite.py" --runs 1 "$@" > "$OUT/huey-$run.json"
    echo "== run $run/$RUNS: conveyor (SQLite, 2 worker processes)" >&2
    "$CONVEYOR_PY" "$ROOT/bench/run.py" --only enqueue throughput latency --json --runs 1 "$@" > "$OUT/conveyor-$run.json"
done

"$HUEY_VENV/bin/python" "$HERE/huey_sqlite.py" \
    --conveyor-json "$OUT"/conveyor-*.json --huey-json "$OUT"/huey-*.json | tee "$OUT/comparison.txt"
