#!/usr/bin/env bash
# PgQueuer against Conveyor's PostgreSQL engine: same database, same workload, same sizes.
#
#   bench/peers/run_pgqueuer.sh                # 3 runs each, full sizes
#   bench/peers/run_pgqueuer.sh --quick        # smoke sizes
#   RUNS=5 PG_DSN=postgresql://127.0.0.1:5432/test bench/peers/run_pgqueuer.sh
#
# Runs alternate (pgqueuer, conveyor, pgqueuer, conveyor, ...), one at a time, so that
# anything else loading the machine hits both sides alike. PgQueuer goes into a
# throwaway virtualenv (PGQUEUER_VENV, default /tmp/pgqueuer-venv), never into
# Conveyor's: it is a peer to measure, not a dependency. Each side keeps its tables in
# its own schema of PG_DSN's database (pgqbench, bench), dropped before and after each
# run (Conveyor's only when CONVEYOR_BENCH_URL names it with ?schema=: never the
# default schema). CONVEYOR_ONLY picks Conveyor's measurements (default: enqueue
# throughput latency, as the peer's). Reports land in OUT (default
# /tmp/conveyor-vs-pgqueuer), with the comparison in comparison.txt.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PGQUEUER_VENV="${PGQUEUER_VENV:-/tmp/pgqueuer-venv}"
PGQUEUER_VERSION="${PGQUEUER_VERSION:-1.6.0}"
PG_DSN="${PG_DSN:-postgresql://127.0.0.1:5432/test}"
OUT="${OUT:-/tmp/conveyor-vs-pgqueuer}"
RUNS="${RUNS:-3}"
PY="${PYTHON:-python3}"
CONVEYOR_PY="${CONVEYOR_PY:-$ROOT/.venv/bin/python}"
CONVEYOR_URL="${CONVEYOR_BENCH_URL:-$PG_DSN?schema=bench}"
CONVEYOR_ONLY="${CONVEYOR_ONLY:-enqueue throughput latency}"

drop_conveyor_schema() {
    "$CONVEYOR_PY" - "$CONVEYOR_URL" <<'PY'
import sys
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg import sql

from conveyor.backends.postgres import PgUrl

url = sys.argv[1]
if "schema" in parse_qs(urlsplit(url).query):  # only a schema the URL names: never the default one
    pg = PgUrl(url)
    with psycopg.connect(pg.conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(pg.schema)))
PY
}

# BATCH=N: tasks each worker process takes at once on both sides (pgqueuer's
# batch_size, Conveyor's worker concurrency); default 10, each library's default.
export PGQUEUER_BATCH_SIZE="${BATCH:-10}" CONVEYOR_WORKER__CONCURRENCY="${BATCH:-10}"

mkdir -p "$OUT"
rm -f "$OUT"/pgqueuer-*.json "$OUT"/conveyor-*.json
if ! "$PGQUEUER_VENV/bin/python" -c "import pgqueuer, sys; sys.exit(pgqueuer.__version__ != '$PGQUEUER_VERSION')" 2>/dev/null; then
    echo "installing pgqueuer==$PGQUEUER_VERSION into $PGQUEUER_VENV" >&2
    "$PY" -m venv "$PGQUEUER_VENV"
    "$PGQUEUER_VENV/bin/python" -m pip install --quiet "pgqueuer==$PGQUEUER_VERSION" asyncpg
fi

trap drop_conveyor_schema EXIT
for run in $(seq 1 "$RUNS"); do
    echo "== run $run/$RUNS: pgqueuer (asyncpg, 2 worker processes)" >&2
    "$PGQUEUER_VENV/bin/python" "$HERE/pgqueuer_bench.py" --dsn "$PG_DSN" --runs 1 "$@" > "$OUT/pgqueuer-$run.json"
    echo "== run $run/$RUNS: conveyor (PostgreSQL, 2 worker processes)" >&2
    drop_conveyor_schema
    # shellcheck disable=SC2086  # CONVEYOR_ONLY is a list of words
    "$CONVEYOR_PY" "$ROOT/bench/run.py" --url "$CONVEYOR_URL" --only $CONVEYOR_ONLY --json --runs 1 "$@" \
        > "$OUT/conveyor-$run.json"
    drop_conveyor_schema
done

"$PGQUEUER_VENV/bin/python" "$HERE/pgqueuer_bench.py" \
    --conveyor-json "$OUT"/conveyor-*.json --peer-json "$OUT"/pgqueuer-*.json | tee "$OUT/comparison.txt"
