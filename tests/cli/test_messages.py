"""Kind 5 of the first day: messages send the user the right way. A TLS failure is not "start
a server"; a port in use is one friendly line (no C-core log before it); `--help` tells what
happens without STATEWARD_API_URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import one_line, stateward
from tests.integration.test_security import certificates  # noqa: F401 - a fixture
from tests.support import ServerProcess


@pytest.fixture
def tls_server(certificates: dict[str, Path], tmp_path: Path):  # noqa: F811
    args = [
        "--tls-cert", str(certificates["server_cert"]),
        "--tls-key", str(certificates["server_key"]),
        "--tls-client-ca", str(certificates["ca"]),
    ]  # fmt: skip
    server = ServerProcess(tmp_path / "tls.db", args=args).start()
    yield server
    server.stop()


def test_plaintext_to_a_tls_server_says_tls_not_start_a_server(
    home: Path, tls_server: ServerProcess
) -> None:
    done = stateward(home, "flow-run", "ls", env={"STATEWARD_API_URL": tls_server.target})
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "accepts connections" in line and "STATEWARD_TLS_CA" in line
    assert "server start" not in line


def test_a_missing_client_certificate_says_so(
    home: Path,
    tls_server: ServerProcess,
    certificates: dict[str, Path],  # noqa: F811
) -> None:
    env = {"STATEWARD_API_URL": tls_server.target, "STATEWARD_TLS_CA": str(certificates["ca"])}
    done = stateward(home, "flow-run", "ls", env=env)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "TLS connection failed" in line and "STATEWARD_TLS_CERT" in line
    assert "server start" not in line


def test_a_port_in_use_is_one_line_and_opens_no_database(home: Path, server: ServerProcess) -> None:
    done = stateward(
        home, "server", "start", "--port", str(server.port), "--db", str(home / "second.db"),
        "--no-ui",
    )  # fmt: skip
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "already in use" in line and "--port" in line
    assert "add_port" not in done.stderr + done.stdout
    assert list(home.iterdir()) == []


def test_help_tells_what_happens_without_a_server_address(home: Path) -> None:
    done = stateward(home, "--help", env={"COLUMNS": "200"})
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "127.0.0.1:8470" not in text
    assert "STATEWARD_API_URL" in text and "STATEWARD_HOME" in text
