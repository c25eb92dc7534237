"""Stand-in for ``conveyor worker`` while the CLI is not installed: same flags, same runtime.

python tests/integration/worker_main.py --app tests.integration.tasks_app:app \
    --concurrency 4 --pool async [--queues a,b] [--tags t1,t2]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging

from conveyor.worker import WorkerOptions, run_worker


def _split(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--app", required=True)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--pool")
    parser.add_argument("--queues", default="")
    parser.add_argument("--tags", default="")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    module, _, attr = args.app.partition(":")
    app = getattr(importlib.import_module(module), attr)
    options = WorkerOptions(
        queues=_split(args.queues),
        tags=_split(args.tags),
        concurrency=args.concurrency,
        pool=args.pool,
        app_path=args.app,
        install_signals=True,
    )
    asyncio.run(run_worker(app, options))


if __name__ == "__main__":
    main()
