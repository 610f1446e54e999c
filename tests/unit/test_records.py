"""The vocabulary's records made quickly (`stateward.states.quick_init`, and State's own
`__init__`): each takes what its dataclass's generated `__init__` takes and makes the same
frozen value."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import typing
from dataclasses import dataclass, field

import pytest

from stateward import runs
from stateward._records import maker, unfrozen
from stateward.runs import FlowRun, OrchestrationResult, SetStateStatus, TaskRun
from stateward.states import ResultData, State, StateDetails, StateType, new_state, quick_init


@quick_init
@dataclass(frozen=True, slots=True)
class Sample:
    required: str
    plain: int = 3
    made: list[int] = field(default_factory=list)


def test_a_quick_record_takes_its_fields_by_position_and_by_name_with_their_defaults():
    assert Sample("a") == Sample(required="a", plain=3, made=[])
    given = Sample("a", 4, [1])
    assert (given.required, given.plain, given.made) == ("a", 4, [1])
    assert Sample(made=[2], required="b").made == [2]
    assert Sample("a").made is not Sample("a").made  # a factory's value is new each time
    assert str(inspect.signature(Sample)) == (
        "(required: 'str', plain: 'int' = 3, made: 'list[int]' = <factory>) -> None"
    )


@dataclass(frozen=True, slots=True)
class SampleAsDataclassesMakesIt:
    required: str
    plain: int = 3
    made: list[int] = field(default_factory=list)


@pytest.mark.parametrize("record", [Sample, StateDetails, runs.TaskRun, runs.Transition])
def test_a_quick_init_is_annotated_and_belongs_to_its_records_module(record):
    init = record.__init__
    assert init.__module__ == record.__module__
    assert init.__qualname__ == f"{record.__qualname__}.__init__"
    hints = typing.get_type_hints(init)  # its annotations resolve in the record's module
    assert hints == {**typing.get_type_hints(record), "return": type(None)}
    signature = inspect.signature(init)
    assert [parameter.annotation for parameter in signature.parameters.values()][1:] == [
        item.type for item in dataclasses.fields(record)
    ]
    assert signature.return_annotation is None


def test_a_quick_init_has_the_signature_dataclasses_would_give():
    assert str(inspect.signature(Sample.__init__)) == str(
        inspect.signature(SampleAsDataclassesMakesIt.__init__)
    )


def test_a_quick_record_refuses_what_its_dataclass_refuses_and_stays_frozen():
    with pytest.raises(TypeError, match="required"):
        Sample()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected"):
        Sample("a", other=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Sample("a", 1, [], 2)  # type: ignore[call-arg]
    sample = Sample("a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        sample.plain = 5  # type: ignore[misc]
    assert dataclasses.replace(sample, plain=5) == Sample("a", 5)


def test_quick_init_refuses_a_record_whose_fields_it_would_set_wrongly():
    with pytest.raises(TypeError, match="__post_init__"):

        @quick_init
        @dataclass(frozen=True, slots=True)
        class Checked:
            value: int

            def __post_init__(self) -> None:
                pass

    with pytest.raises(TypeError, match="plain fields"):

        @quick_init
        @dataclass(frozen=True, slots=True)
        class Named:
            value: int = field(default=0, kw_only=True)


@pytest.mark.parametrize(
    "record",
    [
        TaskRun("t", "load-0", "load", parameters={"x": 1}, tags=("a",)),
        FlowRun("f", "a-run", "etl"),
        OrchestrationResult(SetStateStatus.ACCEPT, State(StateType.RUNNING), written=True),
        StateDetails(task_run_id="t", cache_key="k", refresh_cache=True),
    ],
)
def test_the_vocabularys_records_read_back_and_pickle_as_built(record):
    values = {item.name: getattr(record, item.name) for item in dataclasses.fields(record)}
    assert type(record)(**values) == record
    assert pickle.loads(pickle.dumps(record)) == record
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(record, dataclasses.fields(record)[0].name, "other")


def test_every_record_of_the_runs_module_is_made_quickly():
    made_by_dataclasses = [
        name
        for name, value in vars(runs).items()
        if dataclasses.is_dataclass(value)
        and value.__module__ == runs.__name__
        and value.__init__.__doc__ != f"Make a {name} (see the class for its fields)."
    ]
    assert made_by_dataclasses == []


def test_a_state_takes_its_type_as_a_member_a_number_or_a_name_and_names_itself():
    assert State(6) == State("completed") == State(StateType.COMPLETED)
    assert State(6).type is StateType.COMPLETED
    assert State(StateType.RUNNING).name == "Running"
    assert State(StateType.RUNNING, "Retrying").name == "Retrying"


def test_a_state_given_a_value_as_its_data_keeps_the_value_and_no_data():
    state = State(StateType.COMPLETED, data=[1, 2])
    assert state.data is None and state.result() == [1, 2]
    stored = State(StateType.COMPLETED, data=ResultData(json="[1, 2]"))
    assert stored.data == ResultData(json="[1, 2]") and stored.result() == [1, 2]
    with pytest.raises(dataclasses.FrozenInstanceError):
        stored.name = "Other"  # type: ignore[misc]


class SampleSubclass(Sample):
    __slots__ = ("extra",)


class Unslotted:
    """A base whose instances have a __dict__ (its records' fields class has one too)."""


@quick_init
@dataclass(frozen=True, slots=True)
class SampleOnUnslottedBase(Unslotted):
    required: str
    plain: int = 3


@pytest.mark.parametrize("record", [Sample, StateDetails, State, runs.TaskRun, runs.Transition])
def test_a_quick_record_is_made_through_a_class_with_its_slots_alone(record):
    fields_class = unfrozen(record)
    assert fields_class is not None and fields_class is unfrozen(record)  # made once
    assert fields_class.__slots__ == record.__slots__
    assert not {"__init__", "__setattr__", "__eq__"} & set(vars(fields_class))
    made = Sample("a", 4) if record is Sample else StateDetails("f", "t", transition_id="x")
    assert type(made) in (Sample, StateDetails)  # switched back before it is handed out
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.plain = 5  # type: ignore[union-attr, misc]
    running = State(
        StateType.RUNNING, message="m", details=made if record is not Sample else StateDetails()
    )
    assert type(running) is State and running.name == "Running" and running.message == "m"


def test_a_subclass_of_a_quick_record_is_made_field_by_field_and_a_base_with_a_dict_is_kept():
    made = SampleSubclass("a", 4)
    assert type(made) is SampleSubclass
    assert (made.required, made.plain, made.made) == ("a", 4, [])
    assert unfrozen(SampleOnUnslottedBase).__bases__ == (Unslotted,)
    on_base = SampleOnUnslottedBase("b")
    assert type(on_base) is SampleOnUnslottedBase and (on_base.required, on_base.plain) == ("b", 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        on_base.plain = 5  # type: ignore[misc]


def test_a_records_maker_makes_what_its_class_makes():
    make = maker(Sample)
    assert make("a") == Sample("a") and type(make("a")) is Sample
    assert make("a").made is not make("a").made  # a factory's value is new each time
    assert make(made=[2], required="b") == Sample("b", 3, [2])
    with pytest.raises(TypeError):
        make()  # type: ignore[call-arg]
    details = maker(StateDetails)("f", "t", transition_id="x")
    assert details == StateDetails("f", "t", transition_id="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        details.cache_key = "k"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(details)) == details
    with pytest.raises(KeyError):
        maker(SampleAsDataclassesMakesIt)


def test_new_state_makes_the_state_its_class_makes():
    details = StateDetails(task_run_id="t")
    data = ResultData(json="1")
    made = new_state(StateType.COMPLETED, "", "m", None, "i", details, data)
    assert made == State(StateType.COMPLETED, "", "m", None, "i", details, data)
    assert type(made) is State and made.name == "Completed"
    assert new_state(StateType.COMPLETED, "", "", None, "", details, None, 5).result() == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.name = "other"  # type: ignore[misc]
