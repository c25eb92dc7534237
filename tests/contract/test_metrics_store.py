"""Metric totals (``MetricStore``): additive, atomic, and read back exactly as written."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.backends.base import Backend


async def test_nothing_stored_reads_empty(backend: Backend) -> None:
    assert await backend.metrics_read() == {}
    await backend.metrics_add({})  # writes nothing
    assert await backend.metrics_read() == {}


async def test_adds_sum_per_key(backend: Backend) -> None:
    await backend.metrics_add({"a": 1.0, "b": 0.25})
    await backend.metrics_add({"a": 2.0, "b": 0.5, "c": 3.0})
    assert await backend.metrics_read() == pytest.approx({"a": 3.0, "b": 0.75, "c": 3.0})


async def test_many_keys_in_one_add(backend: Backend) -> None:
    deltas = {f"key-{i:04d}": float(i) for i in range(500)}
    await backend.metrics_add(deltas)
    assert await backend.metrics_read() == pytest.approx(deltas)


async def test_concurrent_adds_lose_nothing(backend: Backend) -> None:
    keys = ("x", "y", "z")
    await asyncio.gather(*(backend.metrics_add({k: 1.0 for k in keys}) for _ in range(20)))
    assert await backend.metrics_read() == pytest.approx(dict.fromkeys(keys, 20.0))


async def test_keys_round_trip_whatever_they_hold(backend: Backend) -> None:
    odd = ['["duration",["q","a b"],"le=0.005"]', "naïve ✓ %s {x} 'quoted'", "k" * 1000]
    await backend.metrics_add(dict.fromkeys(odd, 1.5))
    assert await backend.metrics_read() == pytest.approx(dict.fromkeys(odd, 1.5))


async def test_small_fractions_keep_their_precision(backend: Backend) -> None:
    for _ in range(10):
        await backend.metrics_add({"sum": 0.001})
    assert (await backend.metrics_read())["sum"] == pytest.approx(0.01, rel=1e-9)
