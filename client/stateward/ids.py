"""Ids for runs, states and transitions, made cheaply: random UUIDs (version 4), and for states
time-ordered ones (version 7, RFC 9562).

`uuid.uuid4()` asks the system for 16 random bytes and builds a `UUID` object for every id;
the hot path makes several per task run. Here one system call brings the randomness of 256 ids,
formatted at once. The random ids are as random and as unique as uuid4's (122 random bits from
`os.urandom`); a forked child throws away what it inherited, so no two processes share them.

A time-ordered id starts with the millisecond it was made, then 74 random bits: made one after
the other, they sort in the order they were made, so an index on them takes each new one at its
right edge, on the same few pages as the one before, which stay in memory however long the
history grows (random ids send each insert to a page of its own, read from disk once the index
outgrew the cache). States get them: three per task run, indexed by id. Runs keep random ids,
whose first characters (the short ids people type) tell runs made together apart.
"""

from __future__ import annotations

import os
import threading
import time

_BATCH = 256
_pool: list[str] = []
_tails: list[str] = []
_lock = threading.Lock()


# The variant digit (RFC 4122 and 9562: binary 10xx) for each hex digit the random bytes gave.
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


def _fresh_tails(count: int) -> list[str]:
    """`count` random tails of version-7 UUIDs: `7xxx-Vxxx-xxxxxxxxxxxx`, with the version
    digit 7, the variant digit V and 74 random bits."""
    text = os.urandom(10 * count).hex()
    return [
        f"7{text[i : i + 3]}-{_VARIANT[text[i + 3]]}{text[i + 4 : i + 7]}-{text[i + 7 : i + 19]}"
        for i in range(0, 20 * count, 20)
    ]


def new_id() -> str:
    """A new random UUID (version 4) as text, e.g. for a run or a transition. Thread-safe."""
    while True:
        try:
            return _pool.pop()  # atomic: threads never get the same id
        except IndexError:
            with _lock:
                if not _pool:
                    _pool.extend(_fresh(_BATCH))


def new_ordered_id() -> str:
    """A new time-ordered UUID (version 7) as text, for a state. Thread-safe."""
    while True:
        try:
            tail = _tails.pop()  # atomic: threads never get the same random bits
            break
        except IndexError:
            with _lock:
                if not _tails:
                    _tails.extend(_fresh_tails(_BATCH))
    global _stamp
    millisecond = time.time_ns() // 1_000_000  # since the epoch, 48 bits
    known, head = _stamp  # one tuple: a thread never sees one's millisecond and another's text
    if millisecond != known:
        text = f"{millisecond:012x}"
        head = f"{text[:8]}-{text[8:]}-"
        _stamp = (millisecond, head)
    return head + tail


# The millisecond of the last time-ordered id and its text (ids made in the same millisecond,
# as a task run's states often are, share it).
_stamp: tuple[int, str] = (-1, "")


def _forget_in_child() -> None:
    """In a forked child: drop the parent's ids, and take a new refill lock (a thread of the
    parent may have held it at the fork, and that thread does not exist in the child)."""
    global _lock
    _lock = threading.Lock()
    _pool.clear()
    _tails.clear()


os.register_at_fork(after_in_child=_forget_in_child)

__all__ = ["new_id", "new_ordered_id"]
