"""A command loads what it runs: `stateward --version` needs neither typer nor rich, `--help`
neither the client, asyncio, gRPC nor the server, a command against a server no database code.
Read from `python -X importtime`: the modules each command imported, in a real subprocess."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.cli.conftest import run
from tests.support import running_server

SERVER_CODE = {
    "stateward_service.server",
    "stateward_service.replica",
    "stateward_service.store",
    "stateward_service.web",
    "starlette",
    "uvicorn",
    "jsonschema",
}
CLIENT_CODE = {"stateward.client", "stateward._transport", "grpc", "google.protobuf", "asyncio"}


def imported(home: Path, *args: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules `stateward ARGS...` imported, top-level packages and full names."""
    done = run([sys.executable, "-X", "importtime", "-m", "stateward", *args], home, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            names.update({name, name.split(".")[0]})
    assert "stateward.cli" in names  # the output was read
    return names


def test_version_imports_neither_typer_nor_rich(home: Path) -> None:
    loaded = imported(home, "--version")
    unwanted = loaded & {"typer", "rich", "pydantic", "stateward_service", *CLIENT_CODE}
    assert not unwanted, sorted(unwanted)


@pytest.mark.parametrize("args", [["--help"], ["server", "start", "--help"], ["db", "--help"]])
def test_help_imports_no_client_and_no_server(home: Path, args: list[str]) -> None:
    unwanted = imported(home, *args) & (CLIENT_CODE | SERVER_CODE | {"sqlite3", "ctypes"})
    assert not unwanted, sorted(unwanted)


def test_a_command_against_a_server_imports_no_database_code(home: Path, tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        env = {"STATEWARD_API_URL": server.target}
        loaded = imported(home, "concurrency-limit", "ls", env=env)
    assert "grpc" in loaded  # it did talk to the server
    unwanted = loaded & (SERVER_CODE | {"sqlite3"})
    assert not unwanted, sorted(unwanted)
