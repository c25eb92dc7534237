"""Time-sortable task ids (UUIDv7, RFC 9562), monotonic within one process."""

from __future__ import annotations

import os
import random
import threading
import time

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
    rand_b = _rand(62)
    value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
