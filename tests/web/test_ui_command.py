"""`stateward ui`: the web view of a home's runs where no server runs. Scripts run meanwhile on
the same home share its database, and their runs show in the page's API; a second one on the
same home serves it too."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, wait_until

WEB_VIEW = re.compile(r"web view: (http://\S+/)")

SCRIPT = """
from stateward import flow, task

@task
def double(x):
    return 2 * x

@flow(name="shared-home")
def shared_home():
    return double(21)

print(shared_home())
"""


def start_ui(home: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "STATEWARD_HOME": str(home)}
    env.pop("STATEWARD_API_URL", None)
    with open(log, "wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "stateward", "ui", "--port", "0"],
            env=env,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def ui_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    log = tmp_path / "ui.log"
    process = start_ui(tmp_path, log)
    found: list[str] = []

    def serving() -> bool:
        assert process.poll() is None, log.read_text()
        match = WEB_VIEW.search(log.read_text())
        found.extend([match.group(1)] if match else [])
        return bool(found)

    try:
        wait_until(serving, what="stateward ui to serve")
        yield process, found[0]
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_scripts_on_the_home_share_it_and_show_up(ui_process, tmp_path: Path) -> None:
    process, url = ui_process
    env = {**os.environ, "STATEWARD_HOME": str(tmp_path)}
    env.pop("STATEWARD_API_URL", None)
    script = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True, timeout=60
    )
    assert script.returncode == 0, script.stderr.decode()
    assert script.stdout.decode().strip() == "42"
    runs = httpx.get(f"{url}api/flow-runs", params={"flow": "shared-home"}, timeout=10).json()
    [run] = runs["flow_runs"]
    assert run["state"]["type"] == "COMPLETED"
    detail = httpx.get(f"{url}api/flow-runs/{run['id']}", timeout=10).json()
    assert detail["flow_run"]["state"]["result"] == {"kind": "json", "value": 42}

    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0


def test_a_second_ui_on_the_same_home_serves_it_too(ui_process, tmp_path: Path) -> None:
    log = tmp_path / "second.log"
    second = start_ui(tmp_path, log)
    try:
        wait_until(lambda: WEB_VIEW.search(log.read_text()) is not None, what="a second ui")
        match = WEB_VIEW.search(log.read_text())
        assert match is not None and match.group(1) != ui_process[1]
        listed = httpx.get(f"{match.group(1)}api/flow-runs", timeout=10)
        assert listed.status_code == 200
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
