"""`stateward.ids`: cheap random UUIDs that are still version-4 UUIDs, and time-ordered ones
(version 7) in the order they were made, unique across threads and across a fork."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

from stateward.ids import new_id, new_ordered_id


def test_ids_are_canonical_version_4_uuids() -> None:
    for _ in range(2_000):  # several refills
        text = new_id()
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_ordered_ids_are_version_7_uuids_stamped_with_their_time() -> None:
    for _ in range(2_000):  # several refills
        before = time.time_ns() // 1_000_000
        text = new_ordered_id()
        after = time.time_ns() // 1_000_000
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after  # the first 48 bits: milliseconds


def test_ordered_ids_made_later_sort_after_and_the_rest_is_random() -> None:
    earlier = [new_ordered_id() for _ in range(100)]
    time.sleep(0.002)
    later = [new_ordered_id() for _ in range(100)]
    assert max(earlier) < min(later)
    random_bits = {uuid.UUID(text).int & ((1 << 62) - 1) for text in earlier + later}
    assert len(random_bits) == 200


def test_threads_never_get_the_same_id() -> None:
    taken: list[list[str]] = [[] for _ in range(8)]

    def take(into: list[str]) -> None:
        into.extend(new_id() for _ in range(5_000))
        into.extend(new_ordered_id() for _ in range(5_000))

    threads = [threading.Thread(target=take, args=(into,)) for into in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [text for into in taken for text in into]
    assert len(set(every)) == len(every) == 80_000


def test_a_forked_child_makes_ids_of_its_own() -> None:
    new_id()  # the parent holds ids it has not handed out yet
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write, "".join(new_id() + new_ordered_id() for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with os.fdopen(read) as pipe:
        text = pipe.read()
    from_child = {text[i : i + 36] for i in range(0, len(text), 36)}
    from_parent = {new_id() for _ in range(10)} | {new_ordered_id() for _ in range(10)}
    assert len(from_child) == 10 and not from_child & from_parent


def test_a_child_forked_while_another_thread_refills_still_makes_ids() -> None:
    # Another thread is refilling the pool (it holds the refill lock) at the moment of the fork:
    # the child inherits that lock held, by a thread the child does not have.
    from stateward import ids

    read, write = os.pipe()
    with ids._lock:
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            signal.alarm(20)  # a child that hangs dies (SIGALRM) instead of the test waiting
            os.write(write, new_id().encode())
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child hung making an id"
    with os.fdopen(read) as pipe:
        assert uuid.UUID(pipe.read()).version == 4
