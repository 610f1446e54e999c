"""Exceptions the reference's code catches, found in `stateward.exceptions`: ParameterBindError
(a TypeError) for a flow or task called with arguments its function cannot take, before any run
is made; TerminationSignal for SIGTERM in a flow's code. Real flows on the session's real
server, and a SIGTERMed script on the embedded default."""

from __future__ import annotations

import signal

import pytest

from stateward import flow, resume_flow_run, task
from stateward.exceptions import (
    FailedPrecondition,
    NotPausedError,
    ParameterBindError,
    StatewardError,
    TerminationSignal,
)
from tests.sdk.conftest import spawn

pytestmark = pytest.mark.usefixtures("sdk_server")


def test_a_flow_called_with_arguments_it_cannot_take(client):
    @flow(name="sdk-bind-error")
    def takes_one(a: int, *, b: str = "x") -> int:
        return a

    with pytest.raises(ParameterBindError) as raised:
        takes_one(1, 2)
    message = str(raised.value)
    assert message.startswith("takes_one() cannot be called with these arguments: ")
    assert "too many positional arguments" in message
    assert "it takes (a: int, *, b: str = 'x')" in message
    assert message.endswith("was given 2 positional arguments and no keywords")
    with pytest.raises(ParameterBindError, match=r"keywords \['c'\]"):
        takes_one(c=1)
    assert isinstance(raised.value, TypeError) and isinstance(raised.value, StatewardError)
    assert list(client.list_flow_runs(flow_names=["sdk-bind-error"])) == []  # no run made


def test_a_task_called_with_arguments_it_cannot_take():
    @task
    def adds(x: int, y: int) -> int:
        return x + y

    @flow
    def calls() -> str:
        try:
            adds(1)
        except ParameterBindError as error:
            return str(error)
        return "no error"

    assert calls().startswith("adds() cannot be called with these arguments: missing a required")

    @flow
    def maps() -> str:
        try:
            adds.map([1, 2], z=[3, 4])
        except ParameterBindError as error:
            return str(error)
        return "no error"

    assert maps().startswith("adds.map() cannot be called with these arguments: ")


def test_sigterm_in_a_flow_is_the_termination_signal_of_stateward_exceptions(tmp_path):
    owner = spawn(
        """
        import time
        from stateward import flow
        from stateward.exceptions import TerminationSignal

        @flow
        def long():
            try:
                print("started", flush=True)
                time.sleep(3600)
            except TerminationSignal:
                print("caught TerminationSignal", flush=True)
                raise

        long()
        """,
        env={"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)},
    )
    try:
        assert owner.stdout.readline() == "started\n"
        owner.send_signal(signal.SIGTERM)
        out, err = owner.communicate(timeout=60)
    finally:
        if owner.poll() is None:
            owner.kill()
    assert "caught TerminationSignal" in out, err
    assert "Crashed" in err
    assert issubclass(TerminationSignal, BaseException)
    assert not issubclass(TerminationSignal, Exception)  # `except Exception` lets it through


def test_resuming_a_run_that_is_not_paused():
    @flow
    def done() -> int:
        return 1

    run_id = done(return_state=True).details.flow_run_id
    with pytest.raises(NotPausedError, match="is not paused") as raised:
        resume_flow_run(run_id)
    assert isinstance(raised.value, FailedPrecondition)  # the server's refusal, as before
