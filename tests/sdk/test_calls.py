"""Calls as the reference takes them: flows and tasks on methods, classmethods, staticmethods
and callable objects; flow parameters validated and coerced from their annotations; an async
flow returning an un-awaited async task call."""

from __future__ import annotations

import asyncio

import pydantic
import pytest

from stateward import flow, task
from stateward.exceptions import ParameterTypeError

pytestmark = pytest.mark.usefixtures("sdk_server")


def flow_run_of(client, flow_name: str):
    return next(client.list_flow_runs(flow_names=[flow_name], limit=1))


# --- 15. an async flow returning an un-awaited async task call -----------------------------------


@task
async def triple(x: int) -> int:
    return 3 * x


def test_an_async_flow_returning_an_unawaited_task_call_returns_its_value(client):
    @flow(name="call-unawaited")
    async def hands_over() -> int:
        return triple(4)

    assert asyncio.run(hands_over()) == 12
    final = asyncio.run(hands_over(return_state=True))
    assert final.is_completed() and final.result() == 12
    run = flow_run_of(client, "call-unawaited")
    (task_run,) = client.list_task_runs(flow_run_ids=[run.id])
    assert task_run.state.is_completed() and task_run.state.result() == 12


# --- 4. parameter validation --------------------------------------------------------------------


class Point(pydantic.BaseModel):
    x: int
    y: int = 0


def test_flow_parameters_are_coerced_from_their_annotations(client):
    @flow(name="call-coerced")
    def typed(n: int, point: Point, tags: list[str] | None = None) -> tuple:
        return n, point, tags

    n, point, tags = typed("42", {"x": "1"})
    assert n == 42 and point == Point(x=1) and tags is None
    assert flow_run_of(client, "call-coerced").parameters["n"] == 42


def test_async_flow_parameters_are_coerced_too():
    @flow
    async def typed_async(n: int) -> int:
        return n + 1

    assert asyncio.run(typed_async("1")) == 2


def test_invalid_parameters_fail_the_run_before_its_code_with_hooks(client):
    ran, failures = [], []

    @flow(name="call-invalid", on_failure=[lambda f, r, s: failures.append(s)])
    def typed(n: int) -> int:
        ran.append(n)
        return n

    with pytest.raises(ParameterTypeError, match="n='many'"):
        typed("many")
    assert not ran and len(failures) == 1 and failures[0].is_failed()
    run = flow_run_of(client, "call-invalid")
    assert [s.name for s in client.list_states(run.id)] == ["Pending", "Failed"]
    assert run.start_time is not None and run.end_time is not None
    with pytest.raises(ParameterTypeError):
        run.state.result()


class Config(pydantic.BaseModel):
    limit: int


def test_parameters_that_do_not_fit_win_over_a_name_template_that_reads_them(client):
    # As in the reference, a run whose parameters do not fit never formats its name: it fails
    # for its parameters and is named as if it had no template.
    @flow(name="call-invalid-named", flow_run_name="cfg-{cfg.limit}")
    def configured(cfg: Config) -> int:
        return cfg.limit

    with pytest.raises(ParameterTypeError, match="limit"):
        configured({"limit": "x"})
    run = flow_run_of(client, "call-invalid-named")
    assert [s.name for s in client.list_states(run.id)] == ["Pending", "Failed"]
    assert run.name and not run.name.startswith("cfg-")
    assert configured({"limit": "3"}) == 3
    assert flow_run_of(client, "call-invalid-named").name == "cfg-3"


def test_an_invalid_subflow_parameter_fails_the_subflow():
    @flow
    def child(n: int) -> int:
        return n

    @flow
    def parent():
        return child("x", return_state=True)

    final = parent(return_state=True)
    state = final.result(raise_on_failure=False)
    assert state.is_failed() and "invalid parameters" in state.message


def test_validate_parameters_false_passes_them_as_given():
    @flow(validate_parameters=False)
    def untyped(n: int):
        return n

    assert untyped("42") == "42"
    assert untyped.with_options(validate_parameters=True)("42") == 42


# --- 3. methods and callable objects ------------------------------------------------------------


class Greeter:
    greeting = "hello"

    def __init__(self, name: str) -> None:
        self.name = name

    @flow
    def greet(self, punctuation: str = "!") -> str:
        return f"{self.greeting} {self.name}{punctuation}"

    @task
    def shout(self) -> str:
        return f"{self.greeting.upper()} {self.name.upper()}"

    @flow
    async def greet_async(self) -> str:
        return f"{self.greeting} {self.name} (async)"

    @classmethod
    @flow
    def class_flow_outside(cls, x: int) -> str:
        return f"{cls.__name__}:{x}"

    @flow
    @classmethod
    def class_flow_inside(cls, x: int) -> str:
        return f"{cls.__name__}:{x}"

    @task
    @classmethod
    async def class_task_async(cls, x: int) -> str:
        return f"{cls.__name__}:{x}"

    @flow
    @staticmethod
    def static_flow(x: int) -> int:
        return x + 1

    @task
    @staticmethod
    def static_task(x: int) -> int:
        return x * 10

    @flow
    def uses_tasks(self) -> tuple:
        return self.shout(), self.shout.submit().result(), Greeter.static_task(2)


def test_flows_and_tasks_on_methods_bind_self_and_cls(client):
    greeter = Greeter("ada")
    assert greeter.greet() == "hello ada!"
    assert greeter.greet("?") == "hello ada?"
    assert flow_run_of(client, "greet").parameters == {"punctuation": "?"}
    assert asyncio.run(greeter.greet_async()) == "hello ada (async)"
    assert Greeter.class_flow_outside(1) == "Greeter:1"
    assert greeter.class_flow_inside(2) == "Greeter:2"
    assert Greeter.static_flow(3) == 4 and greeter.static_flow(3) == 4
    assert greeter.uses_tasks() == ("HELLO ADA", "HELLO ADA", 20)
    assert greeter.greet.with_options(name="greet-copy")() == "hello ada!"


def test_an_async_classmethod_task_binds_cls():
    @flow
    async def caller() -> str:
        return await Greeter.class_task_async(5)

    assert asyncio.run(caller()) == "Greeter:5"


class Doubler:
    def __call__(self, x: int) -> int:
        return 2 * x


class AsyncDoubler:
    async def __call__(self, x: int) -> int:
        return 2 * x


def test_callable_objects_can_be_tasks_and_flows(client):
    double = task(Doubler())
    double_async = task(AsyncDoubler())
    as_flow = flow(Doubler())

    @flow
    def uses() -> int:
        return double(3)

    @flow
    async def uses_async() -> int:
        return await double_async(4)

    assert uses() == 6
    assert asyncio.run(uses_async()) == 8
    assert as_flow(5) == 10
    assert flow_run_of(client, "Doubler").state.is_completed()
