"""Kind 3 of the first day: ordinary mistakes are one line saying what is wrong and what to do,
a non-zero exit, and nothing written; never a traceback. (Backups and damaged databases have
their own tests, with the store's faults.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.cli.conftest import one_line, run, stateward

COMMAND = Path(sys.executable).parent / "stateward"  # the script pip installed, as people run it


@pytest.mark.parametrize(
    "args",
    [
        ["flow-run", "ls"],
        ["watch"],
        ["concurrency-limit", "ls"],
        ["db", "backup", "copy.db"],
        ["server", "start", "--no-ui", "--port", "0"],
    ],
)
def test_a_home_that_is_a_file_is_one_line(tmp_path: Path, args: list[str]) -> None:
    home = tmp_path / "not-a-folder"
    home.write_text("notes\n")
    done = stateward(home, *args)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "STATEWARD_HOME" in line and "is a file, not a folder" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]
    assert home.read_text() == "notes\n"


def test_the_sdk_says_the_same_of_a_home_that_is_a_file(tmp_path: Path) -> None:
    home = tmp_path / "not-a-folder"
    home.write_text("")
    program = "from stateward import flow\n\n@flow\ndef hello():\n    return 1\n\nhello()\n"
    done = run([sys.executable, "-c", program], home)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("stateward.exceptions.InvalidSetting: STATEWARD_HOME=")


def test_a_home_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = stateward(blocker / "home", "flow-run", "ls")
    assert done.returncode == 1
    assert "file" in one_line(done.stderr)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["flow-runn", "ls"],
            "Error: No such command 'flow-runn'. Did you mean 'flow-run'? See 'stateward --help'.",
        ),
        (
            ["flow-run", "ls", "--limt", "3"],
            "Error: No such option: --limt (Possible options: --limit). "
            "See 'stateward flow-run ls --help'.",
        ),
        (
            ["flow-run", "inspect"],
            "Error: Missing argument 'RUN' (usage: stateward flow-run inspect [OPTIONS] {RUN}). "
            "See 'stateward flow-run inspect --help'.",
        ),
        (
            ["task-run", "ls", "--limit", "many"],
            "Error: Invalid value for '--limit': 'many' is not a whole number, 1 or more. "
            "See 'stateward task-run ls --help'.",
        ),
        (
            ["concurrency-limit", "create", "nightly", "-1"],
            "Error: -1 is not an option, and no value of this command is below 0 (usage: "
            "stateward concurrency-limit create [OPTIONS] {TAG} {LIMIT}). "
            "See 'stateward concurrency-limit create --help'.",
        ),
        (
            ["flow-run", "ls", "-2.5"],
            "Error: -2.5 is not an option, and no value of this command is below 0 (usage: "
            "stateward flow-run ls [OPTIONS]). See 'stateward flow-run ls --help'.",
        ),
        (
            ["concurrency-limit", "create", "nightly", "--", "-1"],
            "Error: Invalid value for 'LIMIT': -1 is not a whole number, 0 or more. "
            "See 'stateward concurrency-limit create --help'.",
        ),
        (
            ["ui", "--port", "70000"],
            "Error: Invalid value for '--port': 70000 is not a whole number from 0 to 65535. "
            "See 'stateward ui --help'.",
        ),
        (
            ["flow-run", "ls", "--since", "-5m"],
            "Error: Invalid value for '--since': '-5m' is neither a date-time (2026-11-21, "
            "2026-11-21T09:30, or with a zone: 2026-11-21T09:30Z, 2026-11-21T09:30+01:00) nor a "
            "span before now (30m, 2h, 1d, 1w). See 'stateward flow-run ls --help'.",
        ),
        (
            ["task-run", "ls", "--since", "99999999d"],
            "Error: Invalid value for '--since': '99999999d' reaches back before the year 1: "
            "give a shorter span. See 'stateward task-run ls --help'.",
        ),
        (
            ["watch", "--state", "done"],
            "Error: Invalid value for '--state': 'done' is not a state type (SCHEDULED, PENDING, "
            "RUNNING, PAUSED, CANCELLING, COMPLETED, FAILED, CANCELLED, CRASHED). "
            "See 'stateward watch --help'.",
        ),
        (
            ["flow-run", "resume", "0123abcd", "--input", "approver=ann"],
            "Error: Invalid value for '--input': 'approver=ann' is not JSON (Expecting value: "
            "line 1 column 1 (char 0)). See 'stateward flow-run resume --help'.",
        ),
        (
            ["task-run", "ls", "--state", "Done"],
            "Error: Invalid value for '--state': 'Done' is not a state type (SCHEDULED, PENDING, "
            "RUNNING, PAUSED, CANCELLING, COMPLETED, FAILED, CANCELLED, CRASHED). "
            "See 'stateward task-run ls --help'.",
        ),
    ],
)
def test_a_mistake_in_the_command_line_is_one_line_saying_what_and_where_help_is(
    home: Path, args: list[str], line: str
) -> None:
    done = run([str(COMMAND), *args], home)
    assert done.returncode == 2
    assert one_line(done.stderr) == line  # no usage block, no box around it
    assert done.stdout == ""
    assert not home.exists() or not (home / "stateward.db").exists()


def test_no_arguments_still_shows_the_help(home: Path) -> None:
    done = run([str(COMMAND), "flow-run"], home)
    assert done.returncode == 2
    assert "Usage: stateward flow-run [OPTIONS] COMMAND [ARGS]..." in done.stdout
    assert done.stderr == ""


def test_unknown_names_are_one_line(home: Path) -> None:
    limit = stateward(home, "concurrency-limit", "inspect", "no-such-tag")
    assert limit.returncode == 1 and "no-such-tag" in one_line(limit.stderr)
    task_run = stateward(home, "task-run", "inspect", "0123abcd")
    assert task_run.returncode == 1 and "no task run has an id" in one_line(task_run.stderr)


def test_a_backup_into_a_missing_folder_says_how_to_make_it(tmp_path: Path, home: Path) -> None:
    made = stateward(home, "concurrency-limit", "create", "nightly", "1")  # a database to copy
    assert made.returncode == 0, made.stderr
    folder = tmp_path / "backups"
    done = stateward(home, "db", "backup", str(folder / "copy.db"))
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert f"the folder {folder} does not exist" in line and f"mkdir -p {folder}" in line
    assert not folder.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["deployment", "ls"],
        ["work-pool", "create", "pool"],
        ["worker", "start"],
        ["block", "ls"],
        ["variable", "set", "name", "value"],
        ["artifact", "ls"],
        ["automation", "ls"],
        ["profile", "ls"],
        ["config", "view"],
    ],
)
def test_a_command_group_of_the_reference_that_stateward_leaves_out_says_so(
    home: Path, args: list[str]
) -> None:
    """`prefect deployment ls` ported: one line saying Stateward leaves the group out and where
    the README says what to do instead, not a bare "No such command"."""
    done = run([str(COMMAND), *args], home)
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert line.startswith(f"Error: Stateward leaves out the reference's `prefect {args[0]}`"), line
    assert "(README: 'Differences from the reference')" in line, line
    assert done.stdout == ""


def test_version_prints_what_dash_dash_version_does_and_where_runs_go(home: Path) -> None:
    """`stateward version`, as the reference's `prefect version`: the version line of
    `--version`, then the Python, the platform and where runs go (the home's database, or the
    server STATEWARD_API_URL names)."""
    short = run([str(COMMAND), "--version"], home)
    done = run([str(COMMAND), "version"], home)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == short.stdout.strip() and lines[0].startswith("stateward ")
    assert f"Python:     {sys.version.split()[0]} (CPython)" in lines
    assert f"Runs go to: this machine's database, {home / 'stateward.db'} (STATEWARD_HOME)" in lines
    remote = run([str(COMMAND), "version"], home, env={"STATEWARD_API_URL": "127.0.0.1:8470"})
    assert "Runs go to: the server at 127.0.0.1:8470 (STATEWARD_API_URL)" in remote.stdout
