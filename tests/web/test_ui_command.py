"""`stateward ui`: the web view of a home's runs where no server runs. Scripts run meanwhile on
the same home share its database, and their runs show in the page's API; a second one on the
same home serves it too."""

from __future__ import annotations

import contextlib
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


def start_ui(home: Path, log: Path, api_url: str | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "STATEWARD_HOME": str(home)}
    env.pop("STATEWARD_API_URL", None)
    env.update({"STATEWARD_API_URL": api_url} if api_url else {})
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


def listening_ports(pid: int) -> set[int]:
    """The TCP ports the process listens on, from Linux's /proc: its sockets' inodes, looked up
    in the kernel's tables of TCP sockets."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            listening = fields[3] == "0A"  # TCP_LISTEN
            if listening and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


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


def test_it_says_where_to_look_that_scripts_need_no_setting_and_how_to_stop(
    ui_process, tmp_path: Path
) -> None:
    process, url = ui_process
    wait_until(lambda: "Ctrl-C stops it" in (tmp_path / "ui.log").read_text(), what="its lines")
    said = (tmp_path / "ui.log").read_text()
    assert said.splitlines()[0] == f"Stateward web view: {url} (open it in your browser)"
    assert f"it shows the runs in {tmp_path} as they happen" in said
    assert "scripts and the CLI need no setting" in said
    # It opens no gRPC port (nothing is pointed at one), and says of none.
    assert "STATEWARD_API_URL" not in said and "listening on" not in said
    assert listening_ports(process.pid) == {int(url.rsplit(":", 1)[1].strip("/"))}
    process.send_signal(signal.SIGINT)
    assert process.wait(20) == 0
    said = (tmp_path / "ui.log").read_text()
    assert said.splitlines()[-1] == "Stateward web view stopped."


def test_a_client_setting_in_its_shell_is_named_as_sending_runs_elsewhere(tmp_path: Path) -> None:
    log = tmp_path / "ui.log"
    process = start_ui(tmp_path, log, api_url="127.0.0.1:9")
    try:
        wait_until(lambda: "Ctrl-C stops it" in log.read_text(), what="stateward ui to serve")
        assert (
            "STATEWARD_API_URL is set here (127.0.0.1:9): scripts run with it send their runs "
            "to that server, not to this page" in log.read_text()
        )
    finally:
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


def _one_line_error(home: Path, *args: str) -> str:
    env = {**os.environ, "STATEWARD_HOME": str(home)}
    env.pop("STATEWARD_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "stateward", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize("host", ["bad host", "192.0.2.1"])
def test_a_host_that_is_not_this_machines_is_named_with_the_flag_to_change(
    tmp_path: Path, host: str
) -> None:
    line = _one_line_error(tmp_path, "ui", "--host", host, "--port", "0")
    assert f"{host!r} is not an address of this machine" in line
    assert "Give --host an address of this machine: 127.0.0.1" in line
    assert "--ui-port" not in line and "another port" not in line
    line = _one_line_error(tmp_path, "server", "start", "--port", "0", "--ui-host", host)
    assert "Give --ui-host an address of this machine" in line


def test_a_taken_port_names_the_commands_own_flag(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        line = _one_line_error(tmp_path, "ui", "--port", port)
        assert "already in use" in line and "Choose another port with --port" in line
        line = _one_line_error(tmp_path, "server", "start", "--port", "0", "--ui-port", port)
        assert "Choose another port with --ui-port" in line and "--no-ui" in line
