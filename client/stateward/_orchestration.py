"""One run's conversation with the server: propose states, obey WAIT, ride out a server that
is briefly unreachable (a retried proposal carries the same transition id, so it applies once),
keep the run's heartbeat lease while it runs, and log its state changes (at INFO, its end)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from stateward._interrupt import sleep, waiting
from stateward._slots import SlotReleases, slot_releases
from stateward._supervisor import RunSupervisor
from stateward._tracebacks import user_traceback
from stateward.client import Client, Created
from stateward.exceptions import (
    AlreadyExists,
    DeadlineExceeded,
    ServerUnavailable,
    StatewardError,
)
from stateward.ids import new_id
from stateward.runs import FlowRun, OrchestrationResult, SetStateStatus, TaskRun
from stateward.states import (
    TERMINAL_TYPES,
    State,
    StateType,
    new_state,
    new_state_details,
)

_UNAVAILABLE_RETRIES = 3
# A run that has waited this long for a concurrency slot says so at INFO (once); shorter waits
# are logged at DEBUG only.
SLOT_WAIT_INFO_SECONDS = 10.0
T = TypeVar("T")


class RunOrchestration:
    def __init__(
        self, client: Client, supervisor: RunSupervisor, run_id: str, log: logging.Logger
    ) -> None:
        self.client = client
        self.supervisor = supervisor
        self.run_id = run_id
        self.log = log
        self.label = f"run {run_id}"
        # The `extra` of its log lines: with the run's ids once it exists, they are sent to the
        # server with the run's logs.
        self.log_extra: Mapping[str, object] | None = None
        self.state: State | None = None
        # The ids a state of this run names in its details (`flow_run_id`, `task_run_id`), set
        # by its engine: a proposal carries them, so the orchestrator writes its details as
        # they come rather than copy them to name the run.
        self.owner: dict[str, str] = {}
        # The exception that ended the run's code: its traceback goes with the Failed or
        # Crashed line (once, also when it fails the flow run around it).
        self.failure: BaseException | None = None
        self.lease = supervisor.lease
        self._slot_wait: _SlotWait | None = None

    def _retrying(
        self,
        what: str,
        call: Callable[[int], T],
        label: str | None = None,
        failure: ServerUnavailable | DeadlineExceeded | None = None,
    ) -> T:
        """`call(attempt)`, again (up to a few times) while the server cannot be reached;
        each new attempt is logged (a warning: the server was away). `label` names the run
        the call is about, when not this one. `failure` is how a first attempt the caller
        made itself failed (the hot calls make it without a closure): then `call(1)` comes
        next. Raises ServerUnavailable once the attempts are spent, and what `call` raises
        otherwise."""
        label = label or self.label
        attempt = 0
        while True:
            if failure is None:
                try:
                    return call(attempt)
                except (ServerUnavailable, DeadlineExceeded) as error:
                    failure = error
            attempt += 1
            if attempt > _UNAVAILABLE_RETRIES:
                raise ServerUnavailable(
                    f"lost the Stateward server while {what} for {label} ({failure}); "
                    "the server will crash the run when its heartbeat lease lapses"
                )
            delay = 0.2 * 2**attempt
            self.log.warning(
                "%s - the Stateward server cannot be reached while %s; trying again in "
                "%.1fs (%s)",
                label, what, delay, failure, extra=self.log_extra,
            )  # fmt: skip
            failure = None
            time.sleep(delay)

    def read(self, what: str, call: Callable[[], T], label: str | None = None) -> T:
        """`call()`, a read of the server (`what` says of what), sent again (up to a few
        times) while the server cannot be reached, as a proposal is; its answer. Raises
        ServerUnavailable once the attempts are spent, and what `call` raises otherwise."""
        return self._retrying(what, lambda _: call(), label)

    def propose_for(self, run_id: str, proposed: State, label: str) -> OrchestrationResult:
        """Propose a state for another run (`label` names it: a task run of this flow run
        that never started), sent again while the server cannot be reached (one transition
        id: it applies once); the answer. Raises ServerUnavailable once the attempts are
        spent, and the client's other errors."""
        proposed = proposed.with_details(transition_id=new_id())
        return self._retrying(
            f"proposing {proposed.name}",
            lambda _: self.client.set_state(run_id, proposed),
            label,
        )

    def propose(
        self,
        proposed: State,
        *,
        force: bool = False,
        wait: bool = True,
        expected_state_id: str | None = None,
    ) -> OrchestrationResult:
        """Propose a state; the answer. On WAIT, wait and propose again (or, with
        `wait=False`, return the WAIT: the caller waits as it sees fit). With
        `expected_state_id`, the server ABORTs unless the run's current state is that one."""
        proposed = self._owned(proposed)
        while True:
            try:  # the first attempt without a closure: every proposal makes it
                decision = self._set_state(proposed, force, expected_state_id)
            except (ServerUnavailable, DeadlineExceeded) as error:
                decision = self._retrying(
                    f"proposing {proposed.name}",
                    lambda _: self._set_state(proposed, force, expected_state_id),
                    failure=error,
                )
            if decision.status is not _WAIT or not wait:
                return self.observe(decision, proposed)
            self.wait(decision)

    def create(self, send: Callable[[], TaskRun]) -> list[Created]:
        """`send()`, the create of the run under an id new for it, sent again (up to a few
        times) while the server cannot be reached, as a proposal is: the run as created, or
        (a later attempt refused with AlreadyExists) that error, the run having been made by
        an attempt whose answer was lost."""

        def attempt(number: int) -> list[Created]:
            try:
                return [send()]
            except AlreadyExists as exists:
                if not number:
                    raise
                return [exists]

        return self._retrying("creating it", attempt)

    def create_and_start(
        self,
        runs: list[FlowRun | TaskRun],
        running: State,
        adopt: Callable[[list[Created]], None],
    ) -> OrchestrationResult:
        """Create the run (the last of `runs`, after any run it needs first) and propose
        RUNNING in one batch: one round trip and one commit. `adopt` gets the runs as created
        (or, for a create an earlier attempt already made, its AlreadyExists) before the answer
        to RUNNING is taken in; that answer is returned (it may be WAIT: the caller waits and
        proposes again). The runs' ids are new (made by `new_id` for this call): the first
        attempt says so, which spares an orchestrator in this process a read per run."""
        running = self._owned(running)
        try:  # the first attempt without a closure: every run makes it
            created, answer = self._create_and_start(runs, running, 0)
        except (ServerUnavailable, DeadlineExceeded) as error:
            created, answer = self._retrying(
                "creating and starting it",
                lambda attempt: self._create_and_start(runs, running, attempt),
                failure=error,
            )
        adopt(created)
        return self.observe(answer, running)

    def _owned(self, proposed: State) -> State:
        """`proposed` as sent for this run: its details name the run (`owner`) and carry a
        new transition id (which a retried call carries again, so that it applies once)."""
        if proposed.details is not _NO_DETAILS:
            return proposed.with_details(transition_id=new_id(), **self.owner)
        # Most proposals carry no details of their own: the run's ids and the transition id
        # are the only ones, set at once.
        owner = self.owner
        details = new_state_details(
            owner.get("flow_run_id", ""), owner.get("task_run_id", ""), transition_id=new_id()
        )
        return new_state(
            proposed.type,
            proposed.name,
            proposed.message,
            proposed.timestamp,
            proposed.id,
            details,
            proposed.data,
            proposed._value,
        )

    def _set_state(
        self, proposed: State, force: bool, expected_state_id: str | None
    ) -> OrchestrationResult:
        """One attempt of `propose`: the server's answer to `proposed`."""
        return self.client.set_state(
            self.run_id,
            proposed,
            force=force,
            expected_state_id=expected_state_id,
            lease_seconds=self.lease,
        )

    def _create_and_start(
        self, runs: list[FlowRun | TaskRun], running: State, attempt: int
    ) -> tuple[list[Created], OrchestrationResult]:
        """One attempt of `create_and_start` (the first is 0): the runs as created and the
        answer to RUNNING; raises a refusal of either."""
        started = self.client.create_and_start(
            runs, running, lease_seconds=self.lease, new_ids=attempt == 0
        )
        for result in started.created:
            if isinstance(result, AlreadyExists) and attempt:
                continue  # the first attempt created it
            if isinstance(result, StatewardError):
                raise result
        if isinstance(started.answer, StatewardError):
            raise started.answer
        return started.created, started.answer

    def wait(self, decision: OrchestrationResult, stop: Callable[[], bool] = lambda: False) -> None:
        """Wait before proposing again after a WAIT (a signal, or `stop()`, ends it early): for
        a concurrency slot, until a task run leaves RUNNING (the WAIT's delay at most), else
        the delay the WAIT asks for."""
        if decision.waits_for_slot:
            waiting(self._wait_for_slot, decision, stop)
            return
        self.log.info(
            "%s - waiting %.3gs: %s",
            self.label,
            decision.delay_seconds,
            decision.reason,
            extra=self.log_extra,
        )
        sleep(decision.delay_seconds, stop)

    def _wait_for_slot(self, decision: OrchestrationResult, stop: Callable[[], bool]) -> None:
        current = self._slot_wait
        if current is None:
            self.log.debug(
                "%s - waiting for a concurrency slot: %s", self.label, decision.reason,
                extra=self.log_extra,
            )  # fmt: skip
            releases = slot_releases(self.client)
            current = self._slot_wait = _SlotWait(releases, time.monotonic())
            try:
                current.count = releases.enter()
            except BaseException:
                self.stop_waiting_for_slot()
                raise
            if current.count is not None:
                return  # the stream counts releases from now: propose again at once
        waited = time.monotonic() - current.since
        if not current.told and waited >= SLOT_WAIT_INFO_SECONDS:
            current.told = True
            self.log.info(
                "%s - has waited %.0fs for a concurrency slot: %s", self.label, waited,
                decision.reason, extra=self.log_extra,
            )  # fmt: skip
        try:
            current.count = current.releases.wait_past(current.count, decision.delay_seconds, stop)
        except BaseException:
            self.stop_waiting_for_slot()
            raise

    def stop_waiting_for_slot(self) -> None:
        """The run no longer waits for a concurrency slot (it started, or gave up)."""
        current, self._slot_wait = self._slot_wait, None
        if current is not None:
            current.releases.leave()

    def observe(
        self, decision: OrchestrationResult, proposed: State | None = None
    ) -> OrchestrationResult:
        """Take in an answer: log a new state, hold or release the heartbeat lease."""
        if (
            proposed is not None
            and decision.status in _REFUSED
            and decision.state is not None
            and decision.state.details.transition_id == proposed.details.transition_id
            and decision.state.type is proposed.type
        ):  # a retried call whose first attempt was applied (its expected state is gone)
            decision = OrchestrationResult(SetStateStatus.ACCEPT, decision.state)
        if decision.status is not _WAIT:
            self.stop_waiting_for_slot()
        self.observe_state(decision.state)
        return decision

    def observe_state(self, new: State | None) -> None:
        if new is None:
            return
        if self.state is None or new.id != self.state.id:
            level = _level(new)
            failure = None
            if level == logging.ERROR and self.failure is not None:
                failure, self.failure = _first_report(self.failure), None
            if self.log.isEnabledFor(level):
                message = f": {new.message}" if new.message else ""
                _log_line(
                    self.log, level, "%s - %s%s", (self.label, new.name, message),
                    failure, self.log_extra,
                )  # fmt: skip
        self.state = new
        if new.type in _LEASED:
            self.supervisor.hold_lease(self.run_id)
        else:
            self.supervisor.release_lease(self.run_id)

    def crash(self, error: BaseException) -> None:
        """Force Crashed, if the server can still be told."""
        message = f"{type(error).__name__}: {error}".rstrip(": ")
        self.failure = error
        try:
            self.propose(State(StateType.CRASHED, message=message), force=True)
        except Exception as failure:
            self.log.warning("%s - could not report the crash: %s", self.label, failure)


_RETRYING = ("AwaitingRetry", "Retrying")
# The details of every state made without any (one shared value).
_NO_DETAILS = State(StateType.PENDING).details
# Members as globals: read several times quicker than an enum's attributes, on every answer.
_WAIT, _REJECT, _PAUSED = SetStateStatus.WAIT, SetStateStatus.REJECT, StateType.PAUSED
_REFUSED = frozenset({SetStateStatus.REJECT, SetStateStatus.ABORT})
# Sets of members, not tuples: a member is found by identity, never by StateType.__eq__.
# The states whose heartbeat lease the process renews (a paused flow run's process waits for
# the resume: see the server's LEASED_TYPES).
_LEASED = frozenset({StateType.RUNNING, StateType.CANCELLING, StateType.PAUSED})
_ERRORS = frozenset({StateType.FAILED, StateType.CRASHED})


# The level of a state's line by its type (see `_level`), looked up once per state.
_LEVELS = {
    state_type: logging.ERROR
    if state_type in _ERRORS
    else logging.INFO
    if state_type in TERMINAL_TYPES or state_type is StateType.PAUSED
    else logging.DEBUG
    for state_type in StateType
}


def _level(state: State) -> int:
    """Failed and Crashed are errors, a retry a warning; the end of a run and a pause (which
    waits for a person) are news; the steps on the way (Pending, Running...) are debugging
    detail, so that a run says one line at INFO rather than one per step."""
    level = _LEVELS[state.type]
    if level != logging.ERROR and state.name in _RETRYING:
        return logging.WARNING
    return level


def _log_line(
    logger: logging.Logger,
    level: int,
    message: str,
    args: tuple[object, ...],
    error: BaseException | None,
    extra: Mapping[str, object] | None,
) -> None:
    """`logger.log(level, message, *args, exc_info=error, extra=extra)` for a logger enabled
    for `level`, without looking for the caller's file and line (the walk up the stack costs
    as much as the rest of the record): every run ends with such a line, which names its run,
    not a place in the engine."""
    exc_info = (type(error), error, error.__traceback__) if error is not None else None
    record = logger.makeRecord(
        logger.name, level, "(unknown file)", 0, message, args, exc_info, None, extra
    )
    if error is not None and not logger.isEnabledFor(logging.DEBUG):
        # What a Formatter shows for exc_info (it formats only when this is empty): the
        # user's frames, not the engine's. exc_info stays for handlers of their own.
        record.exc_text = user_traceback(error)
    logger.handle(record)


def _first_report(error: BaseException) -> BaseException | None:
    """`error`, unless a run logged its traceback already (a task's exception that then
    fails its flow run is shown once)."""
    if getattr(error, "__stateward_logged__", False):
        return None
    with contextlib.suppress(AttributeError):  # an exception type that takes no attributes
        error.__stateward_logged__ = True  # type: ignore[attr-defined]
    return error


class _SlotWait:
    """A run's wait for a concurrency slot: the releases it watches, the count it read last
    (None: no stream), when it began, and whether its long wait was logged."""

    def __init__(self, releases: SlotReleases, since: float) -> None:
        self.releases = releases
        self.since = since
        self.count: int | None = None
        self.told = False
