"""Ids for runs, states and transitions: random UUIDs (version 4), made cheaply.

`uuid.uuid4()` asks the system for 16 random bytes and builds a `UUID` object for every id;
the hot path makes several per task run. Here one system call brings the randomness of 256 ids,
formatted at once. The ids are as random and as unique as uuid4's (122 random bits from
`os.urandom`); a forked child throws away what it inherited, so no two processes share them.
"""

from __future__ import annotations

import os
import threading

_BATCH = 256
_pool: list[str] = []
_lock = threading.Lock()


# The variant digit (RFC 4122: binary 10xx) for each hex digit the random bytes gave.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _fresh(count: int) -> list[str]:
    """`count` random version-4 UUIDs in their canonical text form."""
    text = os.urandom(16 * count).hex()
    return [
        # The version digit is 4 and the variant 10xx, as uuid.UUID(version=4) sets them.
        f"{text[i : i + 8]}-{text[i + 8 : i + 12]}-4{text[i + 13 : i + 16]}-"
        f"{_VARIANT[text[i + 16]]}{text[i + 17 : i + 20]}-{text[i + 20 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


def new_id() -> str:
    """A new random UUID (version 4) as text, e.g. for a run, a state or a transition.
    Thread-safe."""
    while True:
        try:
            return _pool.pop()  # atomic: threads never get the same id
        except IndexError:
            with _lock:
                if not _pool:
                    _pool.extend(_fresh(_BATCH))


def _forget_in_child() -> None:
    """In a forked child: drop the parent's ids, and take a new refill lock (a thread of the
    parent may have held it at the fork, and that thread does not exist in the child)."""
    global _lock
    _lock = threading.Lock()
    _pool.clear()


os.register_at_fork(after_in_child=_forget_in_child)

__all__ = ["new_id"]
