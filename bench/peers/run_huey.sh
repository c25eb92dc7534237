#!/usr/bin/env bash
# Huey's SqliteHuey against Conveyor on this machine: same workload, same sizes.
#
#   bench/peers/run_huey.sh            # 3 runs each, full sizes
#   bench/peers/run_huey.sh --quick    # smoke run
#
# Huey goes into a throwaway virtualenv (HUEY_VENV, default /tmp/huey-venv), never
# into Conveyor's: it is a peer to measure, not a dependency. Results land in
# OUT (default /tmp/conveyor-vs-huey): huey.json, conveyor.json, and a comparison.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
HUEY_VENV="${HUEY_VENV:-/tmp/huey-venv}"
HUEY_VERSION="${HUEY_VERSION:-3.5.4}"
OUT="${OUT:-/tmp/conveyor-vs-huey}"
PY="${PYTHON:-python3}"
CONVEYOR_PY="${CONVEYOR_PY:-$ROOT/.venv/bin/python}"

mkdir -p "$OUT"
if ! "$HUEY_VENV/bin/python" -c "import huey, sys; sys.exit(huey.__version__ != '$HUEY_VERSION')" 2>/dev/null; then
    echo "installing huey==$HUEY_VERSION into $HUEY_VENV" >&2
    "$PY" -m venv "$HUEY_VENV"
    "$HUEY_VENV/bin/python" -m pip install --quiet "huey==$HUEY_VERSION"
fi

echo "== huey (SqliteHuey, 2 worker processes)" >&2
"$HUEY_VENV/bin/python" "$HERE/huey_sqlite.py" "$@" > "$OUT/huey.json"

echo "== conveyor (SQLite, 2 worker processes)" >&2
"$CONVEYOR_PY" "$ROOT/bench/run.py" --only enqueue throughput latency --json "$@" > "$OUT/conveyor.json"

"$HUEY_VENV/bin/python" "$HERE/huey_sqlite.py" --compare "$OUT/conveyor.json" "$OUT/huey.json" | tee "$OUT/comparison.txt"
