"""The consistent-hash ring: stable, even, and adding a shard moves only its share of keys."""

from __future__ import annotations

from collections import Counter

import pytest

from conveyor.backends.ring import VNODES, HashRing, key_hash
from conveyor.errors import InvalidInput
from conveyor.ids import new_id

KEYS = [f"key-{i}" for i in range(100_000)]


def _owners(ring: HashRing, keys: list[str]) -> list[str]:
    return [ring.identities[ring.shard_of(key)] for key in keys]


def test_key_hash_is_fixed_across_processes_and_releases() -> None:
    # pinned: a change here would re-home every stored key of every ring
    assert key_hash("conveyor") == 0x907BEFC54A3A3000
    assert key_hash("") != key_hash(" ")
    assert 0 <= key_hash("x") < 2**64


@pytest.mark.parametrize("shards", [3, 4, 8])
def test_keys_spread_evenly_over_the_shards(shards: int) -> None:
    ring = HashRing([f"db{i}.example:5432/app" for i in range(shards)])
    counts = Counter(ring.shard_of(key) for key in KEYS)
    mean = len(KEYS) / shards
    assert set(counts) == set(range(shards))
    assert all(abs(n - mean) / mean < 0.15 for n in counts.values()), counts


def test_task_ids_spread_evenly_too() -> None:
    ring = HashRing(["a", "b", "c", "d"])
    counts = Counter(ring.shard_of(new_id()) for _ in range(40_000))
    assert all(abs(n - 10_000) / 10_000 < 0.2 for n in counts.values()), counts


@pytest.mark.parametrize("shards", [3, 4, 8])
def test_adding_a_shard_to_a_ring_of_n_moves_about_one_in_n_plus_one_keys(shards: int) -> None:
    names = [f"db{i}.example:5432/app" for i in range(shards + 1)]
    before = _owners(HashRing(names[:shards]), KEYS)
    after = _owners(HashRing(names), KEYS)
    moved = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    expected = 1 / (shards + 1)
    assert abs(len(moved) / len(KEYS) - expected) < 0.2 * expected, len(moved) / len(KEYS)
    assert {new for _, new in moved} == {names[-1]}  # every key that moved went to the new shard


def test_removing_a_shard_moves_only_its_own_keys() -> None:
    names = ["a", "b", "c", "d"]
    before = _owners(HashRing(names), KEYS)
    after = _owners(HashRing(["a", "b", "d"]), KEYS)
    assert all(old == new for old, new in zip(before, after, strict=True) if old != "c")
    assert "c" not in after


def test_the_order_of_the_shards_does_not_matter() -> None:
    assert _owners(HashRing(["a", "b", "c"]), KEYS[:5000]) == _owners(HashRing(["c", "a", "b"]), KEYS[:5000])


def test_a_ring_of_one_owns_everything() -> None:
    ring = HashRing(["only"])
    assert {ring.shard_of(key) for key in KEYS[:1000]} == {0}
    assert len(ring) == 1


def test_keys_past_the_last_point_wrap_to_the_first() -> None:
    ring = HashRing(["a", "b"], vnodes=1)
    points = sorted((key_hash(f"{name}#0"), i) for i, name in enumerate(["a", "b"]))
    beyond = next(f"k{i}" for i in range(100_000) if key_hash(f"k{i}") > points[-1][0])
    assert ring.shard_of(beyond) == points[0][1]


@pytest.mark.parametrize("identities", [[], ["a", "a"]])
def test_a_ring_needs_distinct_shards(identities: list[str]) -> None:
    with pytest.raises(InvalidInput):
        HashRing(identities)


def test_default_virtual_nodes_are_in_the_documented_range() -> None:
    assert 128 <= VNODES <= 256
