"""`submit` and `map` as the reference has them: states on request, mapping over a state's or a
future's result, defaults and `unmapped` passed whole, keyword arguments mapped, clear errors."""

from __future__ import annotations

import asyncio

import pytest

from stateward import Completed, State, flow, task, unmapped
from stateward.exceptions import MappingLengthMismatch, MappingMissingIterable

pytestmark = pytest.mark.usefixtures("sdk_server")


@task
def add(x: int, y: int = 0) -> int:
    return x + y


@task
def count(items: list[int], extra: tuple[int, ...] = (1, 2, 3)) -> int:
    return len(items) + len(extra)


@task
async def add_async(x: int, y: int = 0) -> int:
    return x + y


def test_submit_and_map_return_states_on_request():
    @flow
    def states() -> tuple[State, list[State]]:
        return add.submit(1, 2, return_state=True), add.map([1, 2], return_state=True)

    one, many = states()
    assert isinstance(one, State) and one.is_completed() and one.result() == 3
    assert all(isinstance(s, State) for s in many)
    assert [s.result() for s in many] == [1, 2]


def test_async_submit_and_map_return_states_on_request():
    @flow
    async def states_async() -> tuple[int, list[int]]:
        one = add_async.submit(1, 2, return_state=True)
        many = add_async.map([3, 4], y=unmapped(1), return_state=True)
        return one.result(), [s.result() for s in many]

    assert asyncio.run(states_async()) == (3, [4, 5])


def test_map_over_a_future_or_a_state_maps_over_its_result():
    @task
    def numbers() -> list[int]:
        return [1, 2, 3]

    @flow
    def over_results() -> tuple[list[int], list[int]]:
        from_future = add.map(numbers.submit(), y=10)
        from_state = add.map(numbers(return_state=True), y=unmapped(100))
        return from_future.result(), from_state.result()

    assert over_results() == ([11, 12, 13], [101, 102, 103])


def test_iterable_defaults_are_not_mapped_and_keywords_are():
    @flow
    def mapped() -> tuple[list[int], list[int], list[int]]:
        counts = count.map([[1], [1, 2]])  # `extra`'s default is a tuple: passed whole
        keyword = add.map(x=[1, 2], y=[10, 20])
        whole = count.map([[1], [1, 2]], extra=unmapped((9,)))
        return counts.result(), keyword.result(), whole.result()

    assert mapped() == ([4, 5], [11, 22], [2, 3])


def test_map_with_no_iterable_or_different_lengths_is_a_clear_error():
    @flow
    def no_iterable():
        return add.map(1, 2)

    @flow
    def mismatched():
        return add.map([1, 2], [1, 2, 3])

    with pytest.raises(MappingMissingIterable, match="at least one iterable"):
        no_iterable()
    with pytest.raises(MappingLengthMismatch, match="x: 2, y: 3"):
        mismatched()
    with pytest.raises(ValueError):  # both are ValueErrors too
        mismatched()


def test_submit_and_map_outside_a_flow_raise_runtime_error_saying_what_to_do():
    """As in the reference, which refuses both outside a flow; the message names the two ways
    out with the task's own name."""
    with pytest.raises(RuntimeError) as refused:
        add.submit(1)
    assert str(refused.value) == (
        "add.submit() runs task runs in the background of a flow run, and no flow run is "
        "running here: call it inside a @flow function, or call add(...) itself to run it now "
        "and get its value"
    )
    with pytest.raises(RuntimeError) as refused:
        add.map([1, 2])
    assert str(refused.value) == (
        "add.map() runs task runs in the background of a flow run, and no flow run is running "
        "here: call it inside a @flow function, or call add(...) once per element to run them now"
    )
    assert add(1, 2) == 3  # the way out it names works: the task itself runs outside a flow


def test_map_results_can_be_passed_on_to_another_map():
    @flow
    def chained() -> list[int]:
        doubled = add.map([1, 2, 3], [1, 2, 3])
        return add.map(doubled, y=unmapped(1)).result()

    assert chained() == [3, 5, 7]


def test_a_state_given_as_an_argument_is_its_result():
    @flow
    def passes_states() -> tuple[int, int]:
        upstream = add(1, 1, return_state=True)
        called = add(upstream, 1)
        submitted = add.submit(Completed(data=4), 1, return_state=True)
        return called, submitted.result()

    assert passes_states() == (3, 5)


@task
def positional_first(x, /, y, *rest, scale=1, **named):
    return (x + y + sum(rest)) * scale + sum(named.values())


def test_map_over_a_task_with_positional_only_and_variadic_parameters():
    # Each mapped call was given every argument by name: a positional-only parameter (and
    # *rest, **named) cannot be given so, and every such map raised ParameterBindError.
    @flow
    def maps() -> list[int]:
        return positional_first.map([1, 2], [10, 20], scale=unmapped(2)).result()

    assert maps() == [22, 44]
