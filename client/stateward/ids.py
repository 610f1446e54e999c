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


# The variant digit (RFC 4122 and 9562: binary 10xx) for each hex digit the random bytes gave,
# as a table for `bytes.translate` (on the digits' ASCII codes).
_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")


def _layout(template: str) -> tuple[bytes, tuple[int, ...], int]:
    """An id's text as `template` shows it: its bytes (one line), where its random digits go
    ('x'), and where its variant digit goes ('v', made from a random digit)."""
    line = template + "\n"
    places = tuple(index for index, char in enumerate(line) if char in "xv")
    return line.encode(), places, line.index("v")


# A version-4 UUID, and the tail of a version-7 UUID after its millisecond (74 random bits).
_UUID4 = _layout("xxxxxxxx-xxxx-4xxx-vxxx-xxxxxxxxxxxx")
_TAIL7 = _layout("7xxx-vxxx-xxxxxxxxxxxx")


def _made(count: int, layout: tuple[bytes, tuple[int, ...], int]) -> list[str]:
    """`count` ids as `layout` says, their digits from the system's randomness. Each digit's
    place is filled for all the ids at once (one slice each): the cost per id is a few
    bytes copied, not a string formatted."""
    line, places, variant = layout
    width = len(places) + len(places) % 2  # random hex digits per id, from whole bytes
    digits = os.urandom(width // 2 * count).hex().encode()
    text = bytearray(line * count)
    step = len(line)
    for digit, place in enumerate(places):
        text[place::step] = digits[digit::width]
    text[variant::step] = text[variant::step].translate(_VARIANT)
    return text.decode().splitlines()


def _fresh(count: int) -> list[str]:
    """`count` random version-4 UUIDs in their canonical text form: the version digit 4, the
    variant 10xx, 122 random bits (as uuid.UUID(version=4) sets them)."""
    return _made(count, _UUID4)


def _fresh_tails(count: int) -> list[str]:
    """`count` random tails of version-7 UUIDs: `7xxx-Vxxx-xxxxxxxxxxxx`, with the version
    digit 7, the variant digit V and 74 random bits."""
    return _made(count, _TAIL7)


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
