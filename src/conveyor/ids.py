"""Time-sortable task ids (UUIDv7, RFC 9562), monotonic within one process."""

from __future__ import annotations

import os
import random
import re
import threading
import time

#: A task id as Conveyor writes it (any UUID, lowercase, canonical form).
ID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

_lock = threading.Lock()
# A fast PRNG seeded from the OS (os.urandom per id costs a syscall); reseeded in
# forked children so two processes never share a stream.
_rng = random.Random()
_rand = _rng.getrandbits
os.register_at_fork(after_in_child=_rng.seed)

_last_ms = 0
_seq = 0


def new_id() -> str:
    """A UUIDv7 string; ids made later in this process sort after earlier ones."""
    global _last_ms, _seq
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _seq += 1
            if _seq > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                ms += 1
                _seq = 0
        else:
            _seq = _rand(10)  # random start, with room to count up
        _last_ms = ms
        seq = _seq
    return _format(ms, seq, _rand(62))


def new_ids(count: int) -> list[str]:
    """``count`` ids at once, in order: one lock and one clock read for a whole bulk
    submit (``new_id`` per task is a large share of its cost)."""
    global _last_ms, _seq
    if count <= 0:
        return []
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms, seq = _last_ms, _seq + 1
        else:
            seq = _rand(10)
        # each millisecond holds sequence numbers up to 0xFFF; past that, borrow the next
        stamps: list[tuple[int, int]] = []
        for _ in range(count):
            if seq > 0xFFF:
                ms, seq = ms + 1, 0
            stamps.append((ms, seq))
            seq += 1
        _last_ms, _seq = ms, seq - 1
    return [_format(m, s, _rand(62)) for m, s in stamps]


def _format(ms: int, seq: int, rand_b: int) -> str:
    # bytes.hex is about twice as fast as formatting a 128-bit int with :032x
    h = ((ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand_b).to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
