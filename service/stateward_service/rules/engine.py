"""The rule engine: an ordered policy of rules decides one proposed state.

Each rule declares the state types it applies to (FROM the run's current type, TO the proposed
type; `None` stands for "no state") and returns its verdict, or nothing to let the proposal pass:

- `Proceed` lets the proposal go on, possibly changed (renamed, details filled in, but of the
  same type), with side effects that are applied only if that proposal is finally written;
- `Reject` (with a replacement state to write instead, or none), `Wait` and `Abort` end the
  decision: later rules do not apply, and the side effects of earlier rules are dropped, which is
  how a rule "undoes" its work when the transition it saw did not happen.

The policy's answer is a `PolicyDecision`: the status (ACCEPT, REJECT, WAIT or ABORT, the
`SetStateStatus` of the answer the caller gets), the state to write if any, and the effects to
apply with it. Rules are pure: everything they read is in the `TransitionContext`, gathered
beforehand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import field, replace
from datetime import datetime
from typing import ClassVar

from stateward.runs import SetStateStatus
from stateward.states import TERMINAL_TYPES, State, StateType, dataclass
from stateward_service.model import LimitUsage, RunRecord

ALL_TYPES: frozenset[StateType | None] = frozenset(StateType)
ALL_OR_NONE: frozenset[StateType | None] = ALL_TYPES | {None}
TERMINAL: frozenset[StateType | None] = frozenset(TERMINAL_TYPES)
NON_TERMINAL: frozenset[StateType | None] = ALL_TYPES - TERMINAL


# Side effects a rule asks for; the orchestrator applies them in the same transaction as the
# state, and only if the proposal they were asked for is the one written.
@dataclass(frozen=True, slots=True, quick=True)
class TakeConcurrencySlots:
    """Take a concurrency slot of each of these tags for the run."""

    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True, quick=True)
class RememberPauseKey:
    """Add the key to the run's pause keys (a run pauses once for each key)."""

    key: str


@dataclass(frozen=True, slots=True, quick=True)
class ResetRunCount:
    """Set the run's run count back to 0 (a task run that runs again)."""


@dataclass(frozen=True, slots=True, quick=True)
class CacheResult:
    """Keep the state written as the key's cached state, until `expiration`."""

    key: str
    expiration: datetime | None


Effect = TakeConcurrencySlots | RememberPauseKey | ResetRunCount | CacheResult


@dataclass(frozen=True, slots=True, quick=True)
class Proceed:
    """The next rule decides: on `proposed` (of the same type) instead of the proposal when
    given; the effects are applied if the proposal is written."""

    proposed: State | None = None
    effects: tuple[Effect, ...] = ()


@dataclass(frozen=True, slots=True, quick=True)
class Reject:
    """The proposal is refused: the replacement is written instead (None: nothing is)."""

    replacement: State | None
    reason: str


@dataclass(frozen=True, slots=True, quick=True)
class Wait:
    """Nothing is written: the run is to propose again after the delay."""

    delay_seconds: float
    reason: str


@dataclass(frozen=True, slots=True, quick=True)
class Abort:
    """Nothing is written: the client stops orchestrating the run."""

    reason: str


# What one rule says about a proposal.
Verdict = Proceed | Reject | Wait | Abort


# Not frozen, as are the records the rules return: they never leave the server, nothing
# changes them once made, and a frozen dataclass costs a call per field to build, on every
# proposal. Its own __init__: the two fields it works out are set there, without a
# __post_init__ call.
@dataclass(slots=True, init=False)
class TransitionContext:
    """What the rules may read about one proposal (never changed once made)."""

    run: RunRecord
    proposed: State
    now: datetime
    # Task runs: the current state of the flow run they belong to (None outside a flow).
    flow_run_state: State | None = None
    # Task runs proposing RUNNING with a cache key: the unexpired state cached under it.
    cached: State | None = None
    # Task runs proposing RUNNING: the concurrency limits of their tags.
    limits: tuple[LimitUsage, ...] = ()
    # A number drawn uniformly from [0, 1) for this proposal (retry jitter).
    jitter: float = 0.0
    # The run's state when the proposal came, and its type (the rules read them again and
    # again: fields, not properties).
    initial: State | None = field(init=False, repr=False, compare=False)
    initial_type: StateType | None = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        run: RunRecord,
        proposed: State,
        now: datetime,
        flow_run_state: State | None = None,
        cached: State | None = None,
        limits: tuple[LimitUsage, ...] = (),
        jitter: float = 0.0,
    ) -> None:
        self.run = run
        self.proposed = proposed
        self.now = now
        self.flow_run_state = flow_run_state
        self.cached = cached
        self.limits = limits
        self.jitter = jitter
        initial = self.initial = run.state
        self.initial_type = None if initial is None else initial.type


class Rule:
    """One orchestration rule. Subclasses set FROM and TO and implement `decide`."""

    FROM: ClassVar[frozenset[StateType | None]] = ALL_OR_NONE
    TO: ClassVar[frozenset[StateType | None]] = ALL_TYPES

    def applies(self, ctx: TransitionContext) -> bool:
        return ctx.initial_type in self.FROM and ctx.proposed.type in self.TO

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return type(self).__name__


@dataclass(slots=True)
class PolicyDecision:
    """What the policy decided about one proposal (never changed once made). `state` is what
    to write (the proposal on ACCEPT, the replacement on a REJECT that has one); None means
    nothing is written. `rule` names the rule that ended the decision, if one did."""

    status: SetStateStatus
    state: State | None
    reason: str = ""
    delay_seconds: float = 0.0
    effects: tuple[Effect, ...] = ()
    rule: str = ""

    @property
    def writes(self) -> bool:
        return self.state is not None


class Policy(tuple[Rule, ...]):
    """An ordered tuple of rules that remembers which of them apply to each pair of types."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._applicable: dict[tuple[StateType | None, StateType], tuple[Rule, ...]] = {}

    def __new__(cls, rules: Sequence[Rule]) -> Policy:
        return super().__new__(cls, rules)

    def applicable(self, from_type: StateType | None, to_type: StateType) -> tuple[Rule, ...]:
        found = self._applicable.get((from_type, to_type))
        if found is None:
            found = tuple(r for r in self if from_type in r.FROM and to_type in r.TO)
            self._applicable[(from_type, to_type)] = found
        return found


def decide(policy: Sequence[Rule], ctx: TransitionContext) -> PolicyDecision:
    """Run the policy's rules in order over one proposal (those whose FROM and TO types cover
    the transition)."""
    if isinstance(policy, Policy):
        rules: Sequence[Rule] = policy.applicable(ctx.initial_type, ctx.proposed.type)
    else:
        rules = [rule for rule in policy if rule.applies(ctx)]
    return decide_by(rules, ctx)


def decide_by(rules: Sequence[Rule], ctx: TransitionContext) -> PolicyDecision:
    """`decide` by the rules of a policy that cover the transition (`Policy.applicable`), in
    the policy's order."""
    effects: list[Effect] = []
    for rule in rules:
        verdict = rule.decide(ctx)
        if verdict is None:
            continue
        if isinstance(verdict, Proceed):
            if verdict.proposed is not None:
                # A proceeding proposal keeps its type (a rule that wants another type rejects
                # with a replacement), so the rules that apply stay the same.
                assert verdict.proposed.type is ctx.proposed.type, rule
                ctx = replace(ctx, proposed=verdict.proposed)
            effects.extend(verdict.effects)
            continue
        if isinstance(verdict, Reject):
            return PolicyDecision(
                SetStateStatus.REJECT, verdict.replacement, verdict.reason, rule=repr(rule)
            )
        if isinstance(verdict, Wait):
            return PolicyDecision(
                SetStateStatus.WAIT,
                None,
                verdict.reason,
                max(verdict.delay_seconds, 0.0),
                rule=repr(rule),
            )
        return PolicyDecision(SetStateStatus.ABORT, None, verdict.reason, rule=repr(rule))
    return PolicyDecision(_ACCEPT, ctx.proposed, "", 0.0, tuple(effects) if effects else ())


_ACCEPT = SetStateStatus.ACCEPT


def null_reject(reason: str) -> Reject:
    """Refuse the proposal and write nothing."""
    return Reject(None, reason)
