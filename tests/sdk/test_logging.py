"""`stateward.logging` as the reference's `prefect.logging`: the same `get_run_logger` as
`stateward`'s, with extra fields and another run's context; MissingContextError outside a run;
`disable_run_logger()` for calling a task's function in a unit test; `get_logger`. Real flows
on a real server (the session's), and on the embedded default in a subprocess."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

import stateward
from stateward import flow, get_run_context, task
from stateward.exceptions import MissingContextError, StatewardError
from stateward.logging import disable_run_logger, get_logger, get_run_logger
from stateward.runtime import flow_run
from tests.sdk.conftest import python
from tests.support import wait_until

pytestmark = pytest.mark.usefixtures("sdk_server")


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[Kept]:
    handler = Kept()
    for name in ("stateward.flow_runs", "stateward.task_runs"):
        logging.getLogger(name).addHandler(handler)
    yield handler
    for name in ("stateward.flow_runs", "stateward.task_runs"):
        logging.getLogger(name).removeHandler(handler)


def test_the_logging_modules_get_run_logger_is_stateward_s():
    assert get_run_logger is stateward.get_run_logger


def test_extra_fields_and_another_runs_context(client, kept):
    @task
    def step() -> None:
        get_run_logger(team="a").info("from the task")
        get_run_logger(context=flow_context[0]).info("for the flow")

    flow_context: list[object] = []

    @flow
    def story() -> str:
        flow_context.append(get_run_context())
        step()
        return str(flow_run.id)

    run_id = story()
    task_line = next(r for r in kept.records if "from the task" in r.getMessage())
    assert task_line.team == "a"  # type: ignore[attr-defined]
    assert task_line.name == "stateward.task_runs"
    flow_line = next(r for r in kept.records if "for the flow" in r.getMessage())
    assert flow_line.name == "stateward.flow_runs"
    assert flow_line.getMessage().startswith("Flow run ")
    wait_until(lambda: any("for the flow" in e.message for e in client.list_logs(run_id)))
    (entry,) = [e for e in client.list_logs(run_id) if "for the flow" in e.message]
    assert entry.task_run_id == ""  # the flow run's own line, though logged in a task


def test_outside_a_run_missing_context_error_a_runtime_error():
    with pytest.raises(MissingContextError, match="needs a flow run or a task run"):
        get_run_logger()
    with pytest.raises(MissingContextError):
        get_run_context()
    assert issubclass(MissingContextError, RuntimeError)
    assert issubclass(MissingContextError, StatewardError)


def test_disable_run_logger_lets_a_tasks_function_run_alone(kept):
    @task
    def greet(name: str) -> str:
        get_run_logger().info("hello %s", name)
        return f"hello {name}"

    with disable_run_logger():
        assert greet.fn("ann") == "hello ann"
    assert kept.records == []
    assert not logging.getLogger("stateward.flow_runs").disabled
    assert not logging.getLogger("stateward.task_runs").disabled
    with pytest.raises(MissingContextError):
        greet.fn("bob")  # the block is over


def test_get_logger_names_children_of_stateward():
    assert get_logger() is logging.getLogger("stateward")
    assert get_logger("mine") is logging.getLogger("stateward.mine")
    assert get_logger("stateward.mine") is logging.getLogger("stateward.mine")


def test_the_reference_import_on_the_embedded_default(tmp_path):
    result = python(
        """
        import json
        from stateward import flow, get_client
        from stateward.logging import get_run_logger
        from stateward.runtime import flow_run

        @flow
        def hello():
            get_run_logger().info("hello from the logging module")
            return flow_run.id

        run_id = hello()  # a flow run sends its lines as it ends
        print(json.dumps([e.message for e in get_client().list_logs(run_id)]))
        """,
        env={"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    messages = json.loads(result.stdout.splitlines()[-1])
    assert any("hello from the logging module" in m for m in messages), messages
