"""JSON logs from a real worker: every attempt line carries its ids and its duration."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from conveyor import Conveyor
from conveyor.logs import ContextFields, formatter, request_id_var, setup_logging, worker_id_var
from tests.integration.support import SpawnWorker, finished


def json_lines(text: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_worker_json_lines_carry_task_worker_queue_attempt_and_duration(
    client: Conveyor, workers: SpawnWorker, tmp_path: Path
) -> None:
    worker = workers(concurrency=2, extra_args=["--log-format", "json"])
    doomed = client.submit("it.always_fails", {"counter": str(tmp_path / "doomed")})  # max_retries=2: 3 attempts
    finished(client, doomed)
    records = [r for r in json_lines(worker.output()) if r.get("task_id") == doomed.id]
    assert [r["attempt"] for r in records] == [1, 2, 3]
    assert [r["level"] for r in records] == ["INFO", "INFO", "WARNING"]
    for r in records:
        assert r["worker_id"] and r["queue"] == "default" and r["logger"] == "conveyor.worker"
        assert isinstance(r["duration_ms"], float) and r["duration_ms"] >= 0
    assert "retries_exhausted" in str(records[-1]["message"])
    started = [r for r in json_lines(worker.output()) if "started" in str(r.get("message"))]
    assert started and started[0]["worker_id"] == records[0]["worker_id"]


def test_context_fields_fill_in_request_and_worker_ids(capsys: object) -> None:
    handler = setup_logging("json", "info")
    try:
        token_r, token_w = request_id_var.set("req-123"), worker_id_var.set("w-9")
        record = logging.LogRecord("conveyor.api", logging.INFO, __file__, 1, "hello %s", ("you",), None)
        assert ContextFields().filter(record)
        line = json.loads(formatter("json").format(record))
        assert (line["message"], line["request_id"], line["worker_id"]) == ("hello you", "req-123", "w-9")
        assert "task_id" not in line  # not inside an attempt
        request_id_var.reset(token_r)
        worker_id_var.reset(token_w)
    finally:
        logging.getLogger("conveyor").removeHandler(handler)
