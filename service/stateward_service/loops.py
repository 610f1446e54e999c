"""The server's loops: periodic sweeps that move runs nobody else will move.

- late runs: flow runs still Scheduled well past their time become Late;
- expired pauses: runs paused past their pause timeout are forced to Failed;
- the Cancelling watchdog: runs Cancelling for too long become Cancelled;
- the cancellation cascade: a cancelled flow run's unfinished task runs and subflows are
  cancelled (at once when a flow run enters CANCELLED in any process sharing the database, and
  on every sweep as a safety net);
- log pruning: with a retention set, the transitions log keeps only its newest entries;
- lapsed leases: a run whose process stopped renewing its heartbeat lease is forced to Crashed,
  and so are the task runs and subflows of such a flow run that never started (Scheduled,
  Pending, or with no state: nobody is left to start them).

Each proposal goes through the orchestrator like any SetState, with `expected_state_id` set to
the state the sweep saw: a run that moved in the meantime is left alone. The sweeps run in a
thread of their own, off the event loop: their scans are reads that grow with the database. A
sweep that changed something logs one line at INFO saying what, to which runs, and why.
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
_UNSTARTED = frozenset({StateType.SCHEDULED, StateType.PENDING})
_NAMED = 5  # the runs a sweep's line names; the rest it counts


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
        sweep: Callable[[], str],
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
                said = await sweeping
            except DatabaseUnavailable as error:  # an outage, not a fault of the sweep's
                if not unreachable:  # one line: psycopg's messages run over several
                    problem = " ".join(str(error).split())
                    log.warning(
                        "the %s loop cannot reach the database (%s); it will try again every %gs",
                        name,
                        problem,
                        period,
                    )
                unreachable = True
            except Exception:
                log.exception("the %s loop failed; it will try again", name)
            else:
                if unreachable:
                    log.info("the %s loop reaches the database again", name)
                    unreachable = False
                if said:
                    log.info("%s: %s", name.replace("_", " "), said)
            self.runs[name] = self.runs.get(name, 0) + 1
            await _sleep_or_wake(period, wake)

    # --- the sweeps (synchronous, off the event loop) --------------------------------------------

    # Each returns what it did, in a line for the server's log ("" when nothing).

    def mark_late_runs(self) -> str:
        """Flow runs named Scheduled whose time passed more than `late_after_seconds` ago."""
        orchestrator = self.orchestrator
        late_after = self.settings.late_after_seconds
        cutoff = orchestrator.clock() - timedelta(seconds=late_after)
        moved: list[str] = []
        found = orchestrator.runs_in_state(RunKind.FLOW_RUN, StateType.SCHEDULED, "Scheduled")
        for run_id, current in found:
            scheduled = current.details.scheduled_time
            if scheduled is None or scheduled >= cutoff:
                continue
            late = State(
                StateType.SCHEDULED,
                name="Late",
                message=f"not started {late_after:g}s after its time",
                details=StateDetails(scheduled_time=scheduled),
            )
            self._propose(moved, run_id, current, late)
        return self._told(
            moved, "Late", f"no process started {{it}} {late_after:g}s after its time"
        )

    def fail_expired_pauses(self) -> str:
        """Runs still PAUSED after their pause timeout are forced to Failed."""
        orchestrator = self.orchestrator
        moment = orchestrator.clock()
        moved: list[str] = []
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
                self._propose(moved, run_id, current, failed, force=True)
        return self._told(moved, "Failed", "nobody resumed {it} before its pause timeout")

    def finish_stuck_cancels(self) -> str:
        """Runs CANCELLING for longer than `cancelling_timeout_seconds` become Cancelled."""
        orchestrator = self.orchestrator
        timeout = self.settings.cancelling_timeout_seconds
        cutoff = orchestrator.clock() - timedelta(seconds=timeout)
        moved: list[str] = []
        for kind in (RunKind.FLOW_RUN, RunKind.TASK_RUN):
            found = orchestrator.runs_in_state(kind, StateType.CANCELLING)
            for run_id, current in found:
                if current.timestamp is None or current.timestamp >= cutoff:
                    continue
                cancelled = State(
                    StateType.CANCELLED,
                    message=f"no process finished the cancel within {timeout:g}s",
                )
                self._propose(moved, run_id, current, cancelled)
        return self._told(
            moved, "Cancelled", f"no process finished cancelling {{it}} within {timeout:g}s"
        )

    def cascade_cancellations(self) -> str:
        """Cancel the unfinished task runs and subflows of cancelled flow runs, down the tree."""
        orchestrator = self.orchestrator
        moved: list[str] = []
        while True:
            children = orchestrator.unfinished_children_of_cancelled_flow_runs()
            before = len(moved)
            for parent, child_id in children:
                try:
                    current = orchestrator.get_run(child_id).state
                except RunNotFound:
                    continue
                cancelled = State(
                    StateType.CANCELLED, message=f"its flow run {parent} was cancelled"
                )
                self._propose(moved, child_id, current, cancelled)
            if len(moved) == before:  # nothing left, or nothing that would move
                return self._told(moved, "Cancelled", "the flow run of {it} was cancelled")

    def crash_lapsed_leases(self) -> str:
        """Runs whose process stopped renewing its heartbeat lease are forced to Crashed."""
        orchestrator = self.orchestrator
        moment = orchestrator.clock()
        crashed = State(
            StateType.CRASHED,
            message="the process running it stopped renewing its heartbeat lease "
            "(it was killed, or lost its connection)",
        )
        moved: list[str] = []
        flow_runs: list[str] = []
        for kind, run_id in orchestrator.runs_with_lapsed_lease(moment):
            if orchestrator.crash_if_lease_lapsed(run_id, crashed, moment):
                moved.append(run_id)
                if kind is _FLOW_RUN:
                    flow_runs.append(run_id)
        said = self._told(
            moved,
            "Crashed",
            "the process running {it} stopped renewing its heartbeat lease (the process was "
            "killed, or lost its connection to the server)",
        )
        # Their task runs and subflows that never started: the process that would have started
        # them is gone (those started hold leases of their own, and are left to them).
        orphans: list[str] = []
        for flow_run_id in flow_runs:
            for _, child_id in orchestrator.unfinished_children(flow_run_id):
                try:
                    current = orchestrator.get_run(child_id).state
                except RunNotFound:
                    continue
                if current is None or current.type in _UNSTARTED:
                    orphan = State(
                        StateType.CRASHED,
                        message=f"its flow run {flow_run_id} crashed before it started",
                    )
                    self._propose(orphans, child_id, current, orphan, force=True)
        told = self._told(orphans, "Crashed", "the flow run of {it} crashed before it started")
        return "; ".join(line for line in (said, told) if line)

    def prune_log(self) -> str:
        """Keep the newest `log_retention` transitions and the newest `run_log_retention` lines
        runs logged (all of them when the setting is 0)."""
        said = []
        keep = self.settings.log_retention
        if keep > 0 and (pruned := self.orchestrator.prune_log(keep)):
            said.append(f"deleted {pruned} transition(s) of the log, keeping the newest {keep}")
        keep = self.settings.run_log_retention
        if keep > 0 and (pruned := self.orchestrator.prune_run_logs(keep)):
            said.append(f"deleted {pruned} line(s) runs logged, keeping the newest {keep}")
        return "; ".join(said)

    def _propose(
        self,
        moved: list[str],
        run_id: str,
        seen: State | None,
        proposed: State,
        force: bool = False,
    ) -> None:
        """Propose `proposed` for the run if it is still in the state `seen`; `moved` takes
        its id when the state was written."""
        result = self.orchestrator.set_state(
            run_id, proposed, force=force, expected_state_id=seen.id if seen else ""
        )
        if result.written:
            moved.append(run_id)

    def _told(self, moved: list[str], state: str, because: str) -> str:
        """The line saying that the runs `moved` are now in `state` and why (`because`, its
        "{it}" the run, or each of them): the first few by kind, name and id, then how many
        more."""
        if not moved:
            return ""
        named = []
        for run_id in moved[:_NAMED]:
            try:
                run = self.orchestrator.get_run(run_id)
            except RunNotFound:  # deleted since
                named.append(run_id)
            else:
                named.append(f"{run.kind.label} {run.name!r} ({run_id})")
        more = f" and {len(moved) - _NAMED} more" if len(moved) > _NAMED else ""
        runs = "1 run" if len(moved) == 1 else f"{len(moved)} runs"
        because = because.format(it="it" if len(moved) == 1 else "each")
        return f"moved {runs} to {state} because {because}: {', '.join(named)}{more}"


async def _sleep_or_wake(period: float, wake: asyncio.Event | None) -> None:
    if wake is None:
        await asyncio.sleep(period)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), timeout=period)
    wake.clear()


__all__ = ["ServerLoops"]
