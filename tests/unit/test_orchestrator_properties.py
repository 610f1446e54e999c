"""Properties that hold after any sequence of proposals, checked by Hypothesis on a real store:
the history is append-only with strictly increasing timestamps, the run's fields follow it, the
log has one entry per written state, and a stored result is never lost."""

from __future__ import annotations

import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stateward.runs import RetryPolicy, RunKind, SetStateStatus, Transition
from stateward.states import TERMINAL_TYPES, ResultData, State, StateDetails, StateType
from stateward_service.model import RunRecord
from stateward_service.orchestrator import Orchestrator
from stateward_service.store.sqlite import Store, StoreReader

NAMES = {StateType.SCHEDULED: ["", "Late", "AwaitingRetry"], StateType.PAUSED: ["", "NotReady"]}


@st.composite
def proposals(draw: st.DrawFn) -> tuple[State, bool, bool]:
    type_ = draw(st.sampled_from(list(StateType)))
    name = draw(st.sampled_from(NAMES.get(type_, [""])))
    data = ResultData(json="1") if draw(st.booleans()) else None
    transition = draw(st.sampled_from(["", "t1", "t2"]))
    proposed = State(type_, name=name, data=data, details=StateDetails(transition_id=transition))
    return proposed, draw(st.booleans()), draw(st.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from([RunKind.FLOW_RUN, RunKind.TASK_RUN]),
    retries=st.integers(0, 2),
    steps=st.lists(proposals(), min_size=1, max_size=12),
)
def test_any_sequence_of_proposals_keeps_the_invariants(kind, retries, steps):
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "p.db")
        orchestrator = Orchestrator(store)
        run = orchestrator.create_run(
            RunRecord(
                kind=kind,
                id=str(uuid.uuid4()),
                name="prop",
                created=datetime.now(UTC),
                flow_name="f" if kind is RunKind.FLOW_RUN else "",
                task_key="t" if kind is RunKind.TASK_RUN else "",
                retry_policy=RetryPolicy(retries=retries),
            ),
            None,
        )
        published: list[Transition] = []
        orchestrator.subscribe(published.extend)
        sequences: list[int] = []
        completed_with_result = None
        for proposed, force, use_cas in steps:
            published.clear()
            before = store.list_states(run.id)
            expected = (before[-1].id if before else "") if use_cas else None
            result = orchestrator.set_state(
                run.id, proposed, force=force, expected_state_id=expected
            )
            after = store.list_states(run.id)
            written = len(after) - len(before)
            # Only ACCEPT and a REJECT with a replacement write, and exactly one state.
            assert written == len(published) in (0, 1)
            assert result.written is (written == 1)
            if result.status in (SetStateStatus.WAIT, SetStateStatus.ABORT):
                assert written == 0
            assert after[: len(before)] == before  # append-only
            sequences.extend(t.sequence for t in published)
            if completed_with_result is not None:
                # Only a forced proposal moves a flow run off a result, to another final state.
                if force and kind is RunKind.FLOW_RUN and after[-1] != completed_with_result:
                    assert after[-1].type in TERMINAL_TYPES
                    completed_with_result = None
                else:
                    assert after[-1] == completed_with_result
            if after and after[-1].is_completed() and after[-1].has_result():
                completed_with_result = after[-1]

        states = store.list_states(run.id)
        stored = store.get_run(run.id)
        assert stored is not None
        stamps = [s.timestamp for s in states]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        assert (stored.state.id if stored.state else None) == (states[-1].id if states else None)
        assert (stored.end_time is not None) == bool(states and states[-1].type in TERMINAL_TYPES)
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
        reader = StoreReader(Path(folder) / "p.db")
        logged, _oldest, _newest = reader.read_log(0, 1000, run_ids=[run.id])
        reader.close()
        assert [t.to_state.id for t in logged] == [s.id for s in states]
        previous = [None, *[s.id for s in states[:-1]]] if states else []
        assert [t.from_state.id if t.from_state else None for t in logged] == previous
        for state in states:
            own = (
                state.details.flow_run_id if kind is RunKind.FLOW_RUN else state.details.task_run_id
            )
            assert own == run.id
        store.close()


def test_a_transition_no_rule_covers_is_decided_as_the_whole_policy_decides_it(tmp_path):
    """The orchestrator answers a transition that no rule of the policy covers (a new run's
    Pending) without gathering what the rules read: for every policy and every pair of types
    it takes that way, its decision is the one `decide` makes over the whole policy."""
    from stateward_service.rules.engine import TransitionContext, decide

    orchestrator = Orchestrator(Store(tmp_path / "d.db"))
    moment = datetime.now(UTC)
    taken = 0
    for kind in RunKind:
        for force in (False, True):
            policy = orchestrator.policies.for_run(kind, force)
            for from_type in [None, *StateType]:
                for to_type in StateType:
                    if policy.applicable(from_type, to_type):
                        continue  # decided by `decide` itself
                    taken += 1
                    run = RunRecord(
                        kind=kind,
                        id=str(uuid.uuid4()),
                        name="r",
                        created=moment,
                        state=None if from_type is None else State(from_type, timestamp=moment),
                    )
                    proposed = State(to_type, details=StateDetails(scheduled_time=moment))
                    fast = orchestrator._decide(run, proposed, force, moment)
                    whole = decide(
                        policy, TransitionContext(run=run, proposed=proposed, now=moment)
                    )
                    assert (fast.status, fast.state, fast.reason, fast.effects) == (
                        whole.status,
                        whole.state,
                        whole.reason,
                        whole.effects,
                    ), (kind, force, from_type, to_type)
    assert taken  # a new run's Pending is among them
