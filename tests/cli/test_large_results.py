"""Large results as a newcomer meets them (issue 13, kind 8): a script run with `python` on a home
of its own (the embedded default), whose task returns more than the stored-result limit. Without
options the value is kept in memory with a warning; asked to persist it fails saying the ways out;
with `persist_result=False` the value reaches the next
task and another process is told it was not persisted; with `result_storage=` (or the setting)
the value is in a file that another process reads."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from tests.cli.conftest import Finished, run

LIMIT = {"STATEWARD_MAX_RESULT_BYTES": "100000"}  # 100 kB: the script returns 1 MB

SCRIPT = """
import sys
from stateward import flow, task

@task({options})
def load() -> bytes:
    return bytes(1_000_000)

@task
def measure(data: bytes) -> int:
    return len(data)

@flow
def pipeline() -> int:
    state = load(return_state=True)
    print("task run", state.details.task_run_id, flush=True)
    return measure(state.result())

print("measured", pipeline())
"""

READER = """
import sys
from stateward import get_client
run = get_client().get_task_run(sys.argv[1])
try:
    print("read", len(run.state.result()))
except Exception as error:
    print(f"{type(error).__name__}: {error}")
    sys.exit(3)
"""


def script(tmp_path: Path, name: str, code: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return path


def python(home: Path, path: Path, *args: str, env: dict[str, str] | None = None) -> Finished:
    return run([sys.executable, str(path), *args], home, env={**LIMIT, **(env or {})})


def task_run_id(done: Finished) -> str:
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("task run ")]
    return line.split()[-1]


def test_without_options_the_value_is_kept_in_memory_with_one_warning(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = python(home, script(tmp_path, "big.py", SCRIPT.format(options="")))
    assert done.returncode == 0, done.stderr
    assert "measured 1000000" in done.stdout
    (warning,) = [line for line in done.stderr.splitlines() if "kept in this process" in line]
    assert "result_storage=" in warning and "STATEWARD_RESULTS_STORAGE_PATH" in warning
    read = python(home, script(tmp_path, "read.py", READER), task_run_id(done))
    assert read.stdout.startswith("MissingResult: this run's result was not persisted")


def test_asked_to_persist_the_script_fails_naming_the_ways_out(tmp_path: Path) -> None:
    options = "persist_result=True"
    done = python(tmp_path / "home", script(tmp_path, "big.py", SCRIPT.format(options=options)))
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("stateward.exceptions.ResultTooLarge: the result of task 'load'")
    assert "persist_result=False" in last and "result_storage=" in last
    assert "measured" not in done.stdout
    assert done.seconds < 30


def test_persist_result_false_keeps_the_value_in_memory_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = python(home, script(tmp_path, "big.py", SCRIPT.format(options="persist_result=False")))
    assert done.returncode == 0, done.stderr
    assert "measured 1000000" in done.stdout
    read = python(home, script(tmp_path, "read.py", READER), task_run_id(done))
    assert read.returncode == 3
    assert read.stdout.startswith("MissingResult: this run's result was not persisted")


def test_result_storage_keeps_the_value_in_a_file_another_process_reads(tmp_path: Path) -> None:
    home, folder = tmp_path / "home", tmp_path / "results"
    code = SCRIPT.format(options=f"result_storage={str(folder)!r}")
    done = python(home, script(tmp_path, "big.py", code))
    assert done.returncode == 0, done.stderr
    assert "measured 1000000" in done.stdout
    (file,) = folder.iterdir()
    assert file.stat().st_size > 1_000_000
    reader = script(tmp_path, "read.py", READER)
    read = python(home, reader, task_run_id(done))
    assert (read.returncode, read.stdout) == (0, "read 1000000\n")
    file.unlink()
    read = python(home, reader, task_run_id(done))
    assert read.returncode == 3
    assert read.stdout.startswith("MissingResult: the result was written to")
    assert str(file) in read.stdout


def test_the_storage_setting_is_every_run_s_default(tmp_path: Path) -> None:
    home, folder = tmp_path / "home", tmp_path / "default-results"
    setting = {"STATEWARD_RESULTS_STORAGE_PATH": str(folder)}
    done = python(home, script(tmp_path, "big.py", SCRIPT.format(options="")), env=setting)
    assert done.returncode == 0, done.stderr
    assert "measured 1000000" in done.stdout
    assert len(list(folder.iterdir())) == 1
    read = python(home, script(tmp_path, "read.py", READER), task_run_id(done))
    assert (read.returncode, read.stdout) == (0, "read 1000000\n")


def test_a_storage_setting_that_is_a_file_is_one_line_and_runs_nothing(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    done = python(
        tmp_path / "home",
        script(tmp_path, "big.py", SCRIPT.format(options="")),
        env={"STATEWARD_RESULTS_STORAGE_PATH": str(not_a_folder)},
    )
    assert done.returncode != 0
    assert "STATEWARD_RESULTS_STORAGE_PATH=" in done.stderr and "is not a folder" in done.stderr
    assert "task run" not in done.stdout
