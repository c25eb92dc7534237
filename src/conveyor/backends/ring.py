"""A consistent-hash ring with virtual nodes: which shard owns a partition key.

Each shard is named by a stable string (its identity) and placed on a 64-bit circle
at ``VNODES`` points, the BLAKE2b hashes of ``"<identity>#<i>"``. A key belongs to the
first point at or after its own hash, wrapping around. Adding a shard to a ring of N
takes over only the arcs its new points cut out, about ``1/(N+1)`` of the keys, and
every key that moves, moves to the new shard; the rest stay where they were. Many
points per shard keep the arcs even, so keys spread evenly (within a few percent).

The hash is fixed (not Python's salted ``hash``), so every process, on every machine
and in every release, places a key on the same shard.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Sequence

from conveyor.errors import InvalidInput

#: points per shard on the circle; changing it re-homes keys, so it is a constant
VNODES = 256


def key_hash(key: str) -> int:
    """A stable 64-bit hash of ``key`` (BLAKE2b, the same in every process)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Maps partition keys to shard indexes ``0..len(identities)-1``.

    ``identities`` name the shards; a shard's place on the ring depends only on its
    identity, never on its position in the list, so reordering the list moves nothing.
    """

    __slots__ = ("_owners", "_points", "identities")

    def __init__(self, identities: Sequence[str], vnodes: int = VNODES) -> None:
        if not identities:
            raise InvalidInput("a hash ring needs at least one shard")
        if len(set(identities)) != len(identities):
            raise InvalidInput(f"shard identities must be distinct, got {list(identities)}")
        self.identities = list(identities)
        points = sorted(
            (key_hash(f"{identity}#{i}"), shard) for shard, identity in enumerate(identities) for i in range(vnodes)
        )
        self._points = [point for point, _ in points]
        self._owners = [shard for _, shard in points]

    def __len__(self) -> int:
        return len(self.identities)

    def shard_of(self, key: str) -> int:
        """The index of the shard that owns ``key``."""
        pos = bisect_left(self._points, key_hash(key))
        return self._owners[pos if pos < len(self._points) else 0]


__all__ = ["VNODES", "HashRing", "key_hash"]
