"""Waiting for a tag concurrency slot: a task run the server answers WAIT because a tag's limit
is full proposes Running again as soon as a task run leaves RUNNING (which frees its slots), not
only when the WAIT's delay is over.

A slot frees when a task run leaves RUNNING, which is a transition: one stream of transitions per
client (the server's WatchTransitions, or in an embedded process its broadcaster, which follows
the shared database's log whichever process wrote it) counts those, for as long as any of the
client's runs waits for a slot. A waiting run reads the count before each proposal and, answered
WAIT, waits for the count to move past it, the WAIT's delay at most (a slot freed by other means,
a raised or deleted limit, a stale slot released by the server, has no transition of its own: the
delay is the backstop). Every waiting run proposes again at each release; the server's rule
decides which one gets the slot, as it did (the reference promises no order either).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable

from stateward.client import Client, WatchStopper
from stateward.runs import RunKind
from stateward.states import StateType

_logger = logging.getLogger("stateward.slots")
# How long a first waiter waits for the stream to be established before it falls back to the
# WAIT's delay alone.
_ESTABLISH_SECONDS = 5.0
# Leaving RUNNING means entering any other type: only those transitions are sent.
_LEFT_RUNNING_TYPES = tuple(t for t in StateType if t is not StateType.RUNNING)


class SlotReleases:
    """The task runs that left RUNNING, counted from one client's stream of transitions while
    at least one of its runs waits for a slot."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._changed = threading.Condition()
        self._released = 0
        self._waiters = 0
        self._stopper: WatchStopper | None = None
        self._established = False

    def enter(self) -> int | None:
        """A run starts waiting for a slot: the stream is opened if it is not (waiting up to a
        few seconds for it to be established). The release count to pass to `wait_past`
        (read once the stream delivers: propose again before waiting), or None when the
        stream could not be established (wait out the WAIT's delay)."""
        with self._changed:
            self._waiters += 1
            if self._stopper is None:
                self._stopper = stopper = WatchStopper()
                self._established = False
                threading.Thread(
                    target=self._watch, args=(stopper,), name="stateward-slot-releases", daemon=True
                ).start()
            self._changed.wait_for(
                lambda: self._established or self._stopper is None, _ESTABLISH_SECONDS
            )
            return self._released if self._established else None

    def leave(self) -> None:
        """A run no longer waits; the stream is closed when no run does."""
        with self._changed:
            self._waiters -= 1
            if self._waiters == 0 and self._stopper is not None:
                self._stopper.stop()
                self._stopper = None

    def wait_past(self, count: int | None, seconds: float, stop: Callable[[], bool]) -> int | None:
        """Wait until a task run left RUNNING after the count `count` was read, `seconds` at
        most, or until `stop()` turns true (asked every 0.1 s); the count to pass next time
        (None: the stream is gone, and the wait was the full delay)."""
        end = time.monotonic() + seconds
        with self._changed:
            while not stop():
                if count is not None and (self._released != count or not self._established):
                    break
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 0.1))
            return self._released if self._established else None

    def _watch(self, stopper: WatchStopper) -> None:
        def started(_: int | None) -> None:
            with self._changed:
                self._established = True
                self._changed.notify_all()

        try:
            for transition in self._client.watch(
                state_types=_LEFT_RUNNING_TYPES, started=started, stopper=stopper
            ):
                left = transition.from_state
                if (
                    transition.run_kind is RunKind.TASK_RUN
                    and left is not None
                    and left.type is StateType.RUNNING
                ):
                    with self._changed:
                        self._released += 1
                        self._changed.notify_all()
        except Exception as error:  # the waits fall back to their delays
            _logger.debug("the stream of slot releases ended: %s", error)
        finally:
            with self._changed:
                if self._stopper is stopper:
                    self._stopper = None
                if self._stopper is None:  # (else a new stream's, after `leave` ended this one)
                    self._established = False
                self._changed.notify_all()


_releases: weakref.WeakKeyDictionary[Client, SlotReleases] = weakref.WeakKeyDictionary()
_releases_lock = threading.Lock()


def _forget_in_child() -> None:
    """A forked child has none of its parent's streams (their threads stay in the parent)."""
    global _releases, _releases_lock
    _releases, _releases_lock = weakref.WeakKeyDictionary(), threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def slot_releases(client: Client) -> SlotReleases:
    """The client's `SlotReleases` (one per client)."""
    with _releases_lock:
        releases = _releases.get(client)
        if releases is None:
            releases = _releases[client] = SlotReleases(client)
        return releases
