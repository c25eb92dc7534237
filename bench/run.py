"""Run Conveyor's benchmarks (``make bench``): a thin wrapper over ``conveyor.bench``.

    python bench/run.py                      # every measurement, 3 runs, temp SQLite files
    python bench/run.py --quick --runs 1     # smoke sizes
    python bench/run.py --only throughput latency --json > figures.json
    python bench/run.py --url sqlite:///data/bench.db   # fresh files next to data/bench.db

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import sys

from conveyor.bench import LOOPS, MEASUREMENTS, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Conveyor benchmarks (see bench/README.md)")
    parser.add_argument("--url", help="engine URL (default: a fresh temporary SQLite file per measurement)")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; figures are their median")
    parser.add_argument("--n", type=int, help="tasks per throughput and claim-cost run (default 20,000)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, rough figures")
    parser.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=(), help="measurements to run")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--concurrency", type=int, help="tasks in flight per worker (default: settings)")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help="event loop (asyncio, as `conveyor worker`)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--check", action="store_true", help="exit 1 when a figure misses its target")
    args = parser.parse_args(argv)
    return run_cli(
        args.url,
        json_out=args.json,
        runs=args.runs,
        n=args.n,
        quick=args.quick,
        only=args.only,
        workers=args.workers,
        concurrency=args.concurrency,
        check=args.check,
        loop=args.loop,
    )


if __name__ == "__main__":
    sys.exit(main())
