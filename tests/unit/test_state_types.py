"""StateType reads as the reference's string enum does (`print(state.type)` shows
`StateType.FAILED`, and a type equals its name), while its number stays the contract's
`stateward.v1.StateType` value, equal to that number and hashed as it."""

from __future__ import annotations

import operator

import pytest

from stateward.states import Completed, Failed, StateType
from stateward.v1 import states_pb2


@pytest.mark.parametrize("state_type", list(StateType))
def test_it_prints_as_the_reference_prints_its_types(state_type: StateType) -> None:
    shown = f"StateType.{state_type.name}"
    assert str(state_type) == shown
    assert repr(state_type) == shown
    assert f"{state_type}" == shown and format(state_type) == shown
    assert f"{state_type:>30}" == shown.rjust(30)
    assert repr([state_type]) == f"[{shown}]"


def test_a_states_type_prints_its_name_not_its_number() -> None:
    assert str(Failed().type) == "StateType.FAILED"
    assert f"{Completed().type}" == "StateType.COMPLETED"


@pytest.mark.parametrize("state_type", list(StateType))
def test_a_type_equals_its_name_and_its_number_and_nothing_else(state_type: StateType) -> None:
    number = state_type.value
    # Each operator on its own: `!=` is not `not ==` unless the class says so.
    assert operator.eq(state_type, state_type.name) and operator.eq(state_type.name, state_type)
    assert not operator.ne(state_type, state_type.name)
    assert not operator.ne(state_type.name, state_type)
    assert operator.eq(state_type, number) and not operator.ne(state_type, number)
    for other in (t for t in StateType if t is not state_type):
        assert operator.ne(state_type, other.name) and operator.ne(other.name, state_type)
        assert not operator.eq(state_type, other.name)
        assert operator.ne(state_type, other.value)
    assert state_type != state_type.name.lower()
    assert state_type in (state_type.name,)
    assert StateType(state_type.name) is state_type and StateType(number) is state_type


def test_its_number_is_the_contracts_and_hashes_as_the_number() -> None:
    for state_type in StateType:
        assert int(state_type) == state_type.value
        assert state_type.value == states_pb2.StateType.Value(f"STATE_TYPE_{state_type.name}")
        assert hash(state_type) == hash(state_type.value)
        assert {state_type.value: "found"}[state_type] == "found"
    assert states_pb2.State(type=StateType.FAILED).type == states_pb2.STATE_TYPE_FAILED
    assert sorted([StateType.FAILED, StateType.PENDING]) == [StateType.PENDING, StateType.FAILED]
