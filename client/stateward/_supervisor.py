"""The process's run supervisor: it keeps the heartbeat leases of the runs this process executes
alive, and tells a flow run when another client cancelled it.

One renewal thread extends every held lease in one call, a third of the lease length apart; one
transitions stream (CANCELLING and CANCELLED states only) serves every flow run in the process.
The stream is established before the first run is created, so no cancel can slip between. On
the embedded default there is no stream: the process's own feed of the log (every process's
transitions, in order, once each) hands the cancels to the same thread, and the writes of the
process's runs wake no event loop on their way.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence

from stateward import settings
from stateward._embedded import local_log
from stateward.client import Client
from stateward.exceptions import StatewardError
from stateward.runs import Transition
from stateward.states import State, StateType

log = logging.getLogger("stateward")

_CANCEL_TYPES = frozenset({StateType.CANCELLING, StateType.CANCELLED})


class RunSupervisor:
    def __init__(self, client: Client, lease: float) -> None:
        self.client = client
        self.lease = lease
        self._lock = threading.Lock()
        self._leases: set[str] = set()
        self._cancel_callbacks: dict[str, Callable[[State], None]] = {}
        self._watching = threading.Event()
        self._started = False

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._renew, name="stateward-leases", daemon=True).start()
        threading.Thread(target=self._watch, name="stateward-cancels", daemon=True).start()
        if not self._watching.wait(10):
            log.warning("could not watch for cancellations; cancels will not stop runs")

    # --- leases ---------------------------------------------------------------------------------

    def hold_lease(self, run_id: str) -> None:
        with self._lock:
            self._leases.add(run_id)

    def release_lease(self, run_id: str) -> None:
        # Looked at first without the lock (a set's membership is read atomically): most
        # states a run goes through hold no lease, and only this run's thread adds it.
        if run_id in self._leases:
            with self._lock:
                self._leases.discard(run_id)

    def _renew(self) -> None:
        period = self.lease / 3
        while True:
            threading.Event().wait(period)
            with self._lock:
                run_ids = list(self._leases)
            if not run_ids:
                continue
            try:
                self.client.renew_leases(run_ids, self.lease)
            except Exception as error:  # the thread must outlive any failure
                log.warning(
                    "could not renew the heartbeat leases of %d run(s): %s",
                    len(run_ids),
                    error,
                    exc_info=not isinstance(error, StatewardError),
                )

    # --- cancellation ---------------------------------------------------------------------------

    def on_cancel(self, flow_run_id: str, callback: Callable[[State], None]) -> None:
        """Call `callback(state)` when the flow run becomes CANCELLING or CANCELLED."""
        with self._lock:
            self._cancel_callbacks[flow_run_id] = callback

    def forget(self, flow_run_id: str) -> None:
        with self._lock:
            self._cancel_callbacks.pop(flow_run_id, None)

    def _watch(self) -> None:
        listen = local_log(self.client)
        if listen is not None:  # the embedded default: the process's own feed of the log
            self._hear(listen)
            return
        while True:
            try:
                for transition in self.client.watch(
                    state_types=_CANCEL_TYPES, started=lambda _: self._watching.set()
                ):
                    self._cancelled(transition)
            except Exception as error:  # the thread must outlive any failure
                log.warning(
                    "lost the cancellation stream (%s); reconnecting",
                    error,
                    exc_info=not isinstance(error, StatewardError),
                )
                threading.Event().wait(1.0)

    def _hear(self, listen: Callable[[Callable[[Sequence[Transition]], None]], None]) -> None:
        """Stop the runs cancelled in the log of an orchestrator in this process: `listen`
        registers a listener called, in the writer's thread, with every transition the
        process publishes; it only picks out the cancels for this thread."""
        heard: queue.SimpleQueue[Transition] = queue.SimpleQueue()

        def pick(transitions: Sequence[Transition]) -> None:
            for transition in transitions:
                if transition.to_state.type in _CANCEL_TYPES:
                    heard.put(transition)

        listen(pick)
        self._watching.set()
        while True:
            self._cancelled(heard.get())

    def _cancelled(self, transition: Transition) -> None:
        """A run became CANCELLING or CANCELLED: stop it if it runs here."""
        with self._lock:
            callback = self._cancel_callbacks.get(transition.run_id)
        if callback is None:
            return
        try:
            callback(transition.to_state)
        except Exception:  # one run's trouble must not cost the others their cancels
            log.exception("stopping the cancelled run %s failed", transition.run_id)


_supervisor: RunSupervisor | None = None
_supervisor_lock = threading.Lock()


def _forget_in_child() -> None:
    """In a forked child: the parent's supervisor has no threads here (its leases would expire,
    its cancels go unheard), and its lock may have been held at the fork. A run of the child
    gets a supervisor of its own."""
    global _supervisor, _supervisor_lock
    _supervisor = None
    _supervisor_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def get_supervisor(client: Client) -> RunSupervisor:
    global _supervisor
    with _supervisor_lock:
        if _supervisor is None:
            _supervisor = RunSupervisor(client, settings.lease_seconds())
    _supervisor.start()
    return _supervisor
