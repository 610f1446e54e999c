"""The server's loops: periodic sweeps that move runs nobody else will move.

- late runs: flow runs still Scheduled well past their time become Late;
- expired pauses: runs paused past their pause timeout are forced to Failed;
- the Cancelling watchdog: runs Cancelling for too long become Cancelled;
- the cancellation cascade: a cancelled flow run's unfinished task runs and subflows are
  cancelled (at once when a flow run enters CANCELLED in any process sharing the database, and
  on every sweep as a safety net);
- log pruning: with a retention set, the transitions log keeps only its newest entries;
- lapsed leases: a run whose process stopped renewing its heartbeat lease is forced to Crashed.

Each proposal goes through the orchestrator like any SetState, with `expected_state_id` set to
the state the sweep saw: a run that moved in the meantime is left alone. The sweeps run in a
thread of their own, off the event loop: their scans are reads that grow with the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from stateward.runs import RunKind, Transition
from stateward.states import State, StateDetails, StateType
from stateward_service.orchestrator import Orchestrator, RunNotFound
from stateward_service.settings import ServerSettings
from stateward_service.store import DatabaseUnavailable

log = logging.getLogger("stateward.loops")
_CANCELLED, _FLOW_RUN = StateType.CANCELLED, RunKind.FLOW_RUN


class ServerLoops:
    """Runs the sweeps as asyncio tasks of the server's event loop, each sweep in the loops'
    thread (one at a time, as the sweeps take the orchestrator's lock per run anyway)."""

    def __init__(self, orchestrator: Orchestrator, settings: ServerSettings) -> None:
        self.orchestrator = orchestrator
        self.settings = settings
        self.runs: dict[str, int] = {}  # sweeps done, by loop name
        self._tasks: list[asyncio.Task[None]] = []
        self._cascade_now = asyncio.Event()
        self._thread: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # while the loops run

    def notice(self, transitions: Sequence[Transition]) -> None:
        """Take note of committed transitions, whichever process wrote them (the replica
        subscribes this to its log follower): a flow run that entered CANCELLED wakes the cascade
        at once, instead of at its next sweep. Any thread may call it; it does not block."""
        loop = self._loop
        if loop is None:
            return
        for transition in transitions:  # a loop, not any(): every commit comes here
            if transition.to_state.type is _CANCELLED and transition.run_kind is _FLOW_RUN:
                break
        else:
            return
        with contextlib.suppress(RuntimeError):  # the loops stopped meanwhile
            loop.call_soon_threadsafe(self._cascade_now.set)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        self._loop = loop
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="stateward-loops")
        for name, period, sweep in (
            ("late_runs", settings.late_runs_interval_seconds, self.mark_late_runs),
            ("expired_pauses", settings.pause_expiry_interval_seconds, self.fail_expired_pauses),
            ("cancelling", settings.cancelling_interval_seconds, self.finish_stuck_cancels),
            ("cascade", settings.cascade_interval_seconds, self.cascade_cancellations),
            ("log_pruning", settings.log_prune_interval_seconds, self.prune_log),
            ("lapsed_leases", settings.lease_check_interval_seconds, self.crash_lapsed_leases),
        ):
            wake = self._cascade_now if name == "cascade" else None
            self._tasks.append(loop.create_task(self._every(name, period, sweep, wake)))

    async def stop(self) -> None:
        """Cancel the loops and wait for a sweep under way to end (the store closes next)."""
        self._loop = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._thread is not None:
            try:
                await asyncio.to_thread(self._thread.shutdown)
            except RuntimeError:  # the interpreter is exiting (an embedded server stops at
                self._thread.shutdown()  # exit): no new worker thread, so wait right here
            self._thread = None

    async def _every(
        self,
        name: str,
        period: float,
        sweep: Callable[[], int],
        wake: asyncio.Event | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        unreachable = False  # said once an outage, not at every sweep of it
        while True:
            try:
                sweeping = loop.run_in_executor(self._thread, sweep)
            except RuntimeError:  # the interpreter is exiting (an embedded server): stop
                return
            try:
                moved = await sweeping
            except DatabaseUnavailable as error:  # an outage, not a fault of the sweep's
                if not unreachable:  # one line: psycopg's messages run over several
                    said = " ".join(str(error).split())
                    log.warning(
                        "the %s loop cannot reach the database (%s); it will try again every %gs",
                        name,
                        said,
                        period,
                    )
                unreachable = True
            except Exception:
                log.exception("the %s loop failed; it will try again", name)
            else:
                if unreachable:
                    log.info("the %s loop reaches the database again", name)
                    unreachable = False
                if moved:
                    log.info("%s: moved %d run(s)", name.replace("_", " "), moved)
            self.runs[name] = self.runs.get(name, 0) + 1
            await _sleep_or_wake(period, wake)

    # --- the sweeps (synchronous, off the event loop) --------------------------------------------

    def mark_late_runs(self) -> int:
        """Flow runs named Scheduled whose time passed more than `late_after_seconds` ago."""
        orchestrator = self.orchestrator
        cutoff = orchestrator.clock() - timedelta(seconds=self.settings.late_after_seconds)
        moved = 0
        found = orchestrator.runs_in_state(RunKind.FLOW_RUN, StateType.SCHEDULED, "Scheduled")
        for run_id, current in found:
            scheduled = current.details.scheduled_time
            if scheduled is None or scheduled >= cutoff:
                continue
            late = State(
                StateType.SCHEDULED,
                name="Late",
                message=f"not started {self.settings.late_after_seconds:g}s after its time",
                details=StateDetails(scheduled_time=scheduled),
            )
            moved += self._propose(run_id, current, late)
        return moved

    def fail_expired_pauses(self) -> int:
        """Runs still PAUSED after their pause timeout are forced to Failed."""
        orchestrator = self.orchestrator
        moment = orchestrator.clock()
        moved = 0
        for kind in (RunKind.FLOW_RUN, RunKind.TASK_RUN):
            found = orchestrator.runs_in_state(kind, StateType.PAUSED)
            for run_id, current in found:
                timeout = current.details.pause_timeout
                if timeout is None or timeout >= moment:
                    continue
                failed = State(
                    StateType.FAILED,
                    message=f"the run was paused and never resumed before {timeout.isoformat()}",
                )
                moved += self._propose(run_id, current, failed, force=True)
        return moved

    def finish_stuck_cancels(self) -> int:
        """Runs CANCELLING for longer than `cancelling_timeout_seconds` become Cancelled."""
        orchestrator = self.orchestrator
        timeout = self.settings.cancelling_timeout_seconds
        cutoff = orchestrator.clock() - timedelta(seconds=timeout)
        moved = 0
        for kind in (RunKind.FLOW_RUN, RunKind.TASK_RUN):
            found = orchestrator.runs_in_state(kind, StateType.CANCELLING)
            for run_id, current in found:
                if current.timestamp is None or current.timestamp >= cutoff:
                    continue
                cancelled = State(
                    StateType.CANCELLED,
                    message=f"no process finished the cancel within {timeout:g}s",
                )
                moved += self._propose(run_id, current, cancelled)
        return moved

    def cascade_cancellations(self) -> int:
        """Cancel the unfinished task runs and subflows of cancelled flow runs, down the tree."""
        orchestrator = self.orchestrator
        moved = 0
        while True:
            children = orchestrator.unfinished_children_of_cancelled_flow_runs()
            moved_now = 0
            for parent, child_id in children:
                try:
                    current = orchestrator.get_run(child_id).state
                except RunNotFound:
                    continue
                cancelled = State(
                    StateType.CANCELLED, message=f"its flow run {parent} was cancelled"
                )
                moved_now += self._propose(child_id, current, cancelled)
            moved += moved_now
            if not moved_now:  # nothing left, or nothing that would move
                return moved

    def crash_lapsed_leases(self) -> int:
        """Runs whose process stopped renewing its heartbeat lease are forced to Crashed."""
        orchestrator = self.orchestrator
        moment = orchestrator.clock()
        crashed = State(
            StateType.CRASHED,
            message="the process running it stopped renewing its heartbeat lease "
            "(it was killed, or lost its connection)",
        )
        return sum(
            orchestrator.crash_if_lease_lapsed(run_id, crashed, moment)
            for _, run_id in orchestrator.runs_with_lapsed_lease(moment)
        )

    def prune_log(self) -> int:
        """Keep the newest `log_retention` transitions and the newest `run_log_retention` lines
        runs logged (all of them when the setting is 0)."""
        pruned = 0
        if self.settings.log_retention > 0:
            pruned += self.orchestrator.prune_log(self.settings.log_retention)
        if self.settings.run_log_retention > 0:
            pruned += self.orchestrator.prune_run_logs(self.settings.run_log_retention)
        return pruned

    def _propose(
        self, run_id: str, seen: State | None, proposed: State, force: bool = False
    ) -> int:
        result = self.orchestrator.set_state(
            run_id, proposed, force=force, expected_state_id=seen.id if seen else ""
        )
        return 1 if result.written else 0


async def _sleep_or_wake(period: float, wake: asyncio.Event | None) -> None:
    if wake is None:
        await asyncio.sleep(period)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), timeout=period)
    wake.clear()


__all__ = ["ServerLoops"]
