"""The worker runtime (``conveyor worker``)."""

from conveyor.worker.runner import Worker, WorkerOptions, run_worker

__all__ = ["Worker", "WorkerOptions", "run_worker"]
