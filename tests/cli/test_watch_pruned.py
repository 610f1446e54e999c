"""`stateward watch --from-start` on a log whose oldest transitions were pruned (the server's
`--log-retention`): it replays from the oldest transition still kept, says in one line on
stderr that the older ones were pruned, and goes on live; on the embedded default and against
a server. `--after` a pruned sequence is still refused, saying what to do."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stateward.runs import RunKind
from stateward.states import State, StateType
from stateward_service.model import RunRecord
from stateward_service.orchestrator import Orchestrator
from stateward_service.store import Store
from tests.cli.conftest import Lines, environment, stateward
from tests.support import ROOT, ServerProcess, wait_until


def write_and_prune(database: Path) -> str:
    """A flow run moved Pending → Running → Completed (transitions #1 to #3), then the log
    pruned to its newest two; returns the run's name."""
    orchestrator = Orchestrator(Store(database))
    try:
        name = f"pruned-{uuid.uuid4().hex[:6]}"
        run = orchestrator.create_run(
            RunRecord(
                kind=RunKind.FLOW_RUN,
                id=str(uuid.uuid4()),
                name=name,
                created=datetime.now(UTC),
                flow_name="f",
            ),
            State(StateType.PENDING),
        )
        orchestrator.set_state(run.id, State(StateType.RUNNING))
        orchestrator.set_state(run.id, State(StateType.COMPLETED))
        assert orchestrator.prune_log(2) == 1
        return run.id
    finally:
        orchestrator.close()


def propose_again(database: Path, run_id: str) -> None:
    """A new transition (#4), written by another process's connection to the file."""
    orchestrator = Orchestrator(Store(database))
    try:
        orchestrator.set_state(run_id, State(StateType.RUNNING, name="Again"), force=True)
    finally:
        orchestrator.close()


@contextmanager
def target(home: Path, where: str) -> Iterator[dict[str, str]]:
    """The environment of a command on `home`'s database: on its own (embedded), or through a
    server on that file."""
    if where == "embedded":
        yield {}
        return
    server = ServerProcess(home / "stateward.db", log_path=home.parent / "server.log").start()
    try:
        yield {"STATEWARD_API_URL": server.target}
    finally:
        server.stop()


@pytest.mark.parametrize("where", ["embedded", "server"])
def test_watch_from_start_replays_what_the_log_keeps_and_says_older_were_pruned(
    tmp_path: Path, where: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    run_id = write_and_prune(home / "stateward.db")
    with target(home, where) as env:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "stateward", "watch", "--from-start"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(home, env),
            cwd=ROOT,
        )
        try:
            out, err = Lines(watcher.stdout), Lines(watcher.stderr)
            wait_until(
                lambda: len(out.matching("→")) >= 2 or watcher.poll() is not None,
                timeout=60,
                what="the replay",
            )
            assert watcher.poll() is None, err.lines  # it did not give up
            propose_again(home / "stateward.db", run_id)
            wait_until(lambda: bool(out.matching("→ Again")), timeout=60, what="a live line")
            assert watcher.poll() is None, err.lines
        finally:
            watcher.terminate()
            watcher.wait(20)
    transitions = out.matching("→")
    assert [line.split("→")[1].strip() for line in transitions] == ["Running", "Completed", "Again"]
    pruned = err.matching("pruned")
    assert len(pruned) == 1, err.lines
    assert "#2" in pruned[0] and "#1" in pruned[0], pruned
    assert not err.matching("Error"), err.lines


def test_watch_after_a_pruned_sequence_says_what_the_log_keeps(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    write_and_prune(home / "stateward.db")
    done = stateward(home, "watch", "--after", "0", timeout=60)
    assert done.returncode == 1
    (said,) = done.stderr.strip().splitlines()  # one line: what is wrong, what to do
    assert "oldest kept is 2" in said and "--after 1" in said and "--from-start" in said
