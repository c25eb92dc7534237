"""A queue's ``max_length`` set at run time reaches every submitter within ``BOUNDS_TTL``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor import app as app_module
from conveyor.config import Settings
from conveyor.errors import QueueFull
from conveyor.task import SubmitOptions

SMALL = SubmitOptions(queue="small")


async def test_another_submitter_applies_a_new_bound_after_the_ttl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "BOUNDS_TTL", 0.2)
    url = f"sqlite:///{tmp_path / 'b.db'}"
    operator, submitter = Conveyor(url), Conveyor(url)
    try:
        await submitter.submit_async("t", {}, SMALL)  # reads the (empty) bounds now
        await operator.queue_update_async("small", max_length=1)
        await submitter.submit_async("t", {}, SMALL)  # within the TTL: the old, unbounded view
        await asyncio.sleep(0.25)
        with pytest.raises(QueueFull):
            await submitter.submit_async("t", {}, SMALL)
        with pytest.raises(QueueFull):  # the operator's own process applies it at once
            await operator.submit_async("t", {}, SMALL)
    finally:
        await operator.aclose()
        await submitter.aclose()


async def test_a_stored_bound_overrides_config_and_clearing_it_restores_config(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    app = Conveyor(settings=Settings(url=url, queues={"small": {"max_length": 5}}))
    try:
        assert await app.max_lengths_async() == {"small": 5}
        info = await app.queue_update_async("small", max_length=2)
        assert info.max_length == 2 and await app.max_lengths_async() == {"small": 2}
        info = await app.queue_update_async("small", clear=["max_length"])
        assert info.max_length == 5 and await app.max_lengths_async() == {"small": 5}
    finally:
        await app.aclose()
