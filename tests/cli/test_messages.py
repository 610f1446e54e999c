"""Kind 5 of the first day: messages send the user the right way. A TLS failure is not "start
a server"; a port in use is one friendly line (no C-core log before it); `--help` tells what
happens without STATEWARD_API_URL."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from stateward_service.settings import declarations
from tests.cli.conftest import one_line, stateward
from tests.integration.test_security import certificates  # noqa: F401 - a fixture
from tests.support import PostgresDatabases, ServerProcess, write_lock_held


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


def test_the_web_views_port_as_api_url_says_http_and_the_grpc_port_not_tls(
    home: Path, tmp_path: Path
) -> None:
    """STATEWARD_API_URL at the web view's port (HTTP/1.x): gRPC's 'http1.x server' becomes
    'a web server, give the gRPC port', not advice about TLS."""
    server = ServerProcess(tmp_path / "web.db", ui=True).start()
    try:
        address = f"127.0.0.1:{server.ui_port}"
        done = stateward(home, "flow-run", "ls", env={"STATEWARD_API_URL": address})
    finally:
        server.stop()
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert address in line and "HTTP/1.x" in line and "web view" in line, line
    assert "gRPC port (by default 8470)" in line and "TLS" not in line, line


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


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--ui-port"], "--ui-port"), (["--no-ui", "--metrics-port"], "--metrics-port")],
)
def test_a_taken_web_view_or_metrics_port_is_one_line_and_opens_no_database(
    home: Path, flags: list[str], named: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        db = home / "db" / "stateward.db"
        done = stateward(home, "server", "start", "--port", "0", "--db", str(db), *flags, port)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert f"127.0.0.1:{port}" in line and "already in use" in line and named in line
    assert list(home.iterdir()) == []  # neither the database nor its folder was made


def test_a_server_on_loopback_does_not_offer_its_address_to_other_machines(
    server: ServerProcess,
) -> None:
    output = server.output()  # a server started without --host: 127.0.0.1
    assert f"for clients on this machine: export STATEWARD_API_URL={server.target}" in output
    assert "other machines" not in output


def test_server_start_help_shows_every_flag_and_variable_whole_at_80_columns(home: Path) -> None:
    done = stateward(home, "server", "start", "--help", env={"COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    assert all(len(line) <= 80 for line in done.stdout.splitlines()), done.stdout
    words = set(done.stdout.replace(",", " ").replace("(", " ").replace(")", " ").split())
    for declared in declarations():
        assert declared.env in words, declared.env
        flag = declared.flag if declared.kind is not bool else f"--no-{declared.flag[2:]}"
        assert flag in words, flag


def test_a_new_database_file_another_program_holds_locked_is_one_line(
    home: Path, tmp_path: Path
) -> None:
    """A new SQLite file whose lock another program holds (an open transaction in the sqlite3
    shell) cannot be made a WAL database: one line saying so, not sqlite3's traceback."""
    database = tmp_path / "held.db"
    with write_lock_held(database):
        done = stateward(home, "server", "start", "--port", "0", "--db", str(database), "--no-ui")
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith("Error: ") and str(database) in line and "locked" in line, line


def test_a_postgresql_database_the_user_may_not_create_in_is_one_line_saying_what_to_grant(
    home: Path, postgres_databases: PostgresDatabases
) -> None:
    """PostgreSQL 15 and later give CREATE on schema public only to the database's owner: a
    server started on a database its user does not own says which privilege is missing and what
    to do, in one line, not psycopg's traceback. Taken from the test role on a database of its
    own (the role may not create roles, and PostgreSQL lets an owner revoke its own privilege)."""
    import psycopg

    url = postgres_databases.create()
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("REVOKE CREATE ON SCHEMA public FROM pg_database_owner")
        user = admin.info.user
    database = url.partition("?")[0].rsplit("/", 1)[1]
    done = stateward(home, "server", "start", "--port", "0", "--db", url, "--no-ui")
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith("Error: ") and database in line and "CREATE" in line, line
    assert f"GRANT CREATE ON SCHEMA public TO {user}" in line, line
    assert "a database the user owns" in line, line
    postgres_databases.release(url)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("postgresql://ann:secret-pw@127.0.0.1/stateward?sslmod=require", 'parameter: "sslmod"'),
        ("postgresql://ann:secret-pw@[::1/stateward", 'matching "]"'),
    ],
)
def test_a_postgresql_url_libpq_cannot_read_is_one_line(home: Path, url: str, said: str) -> None:
    """A misspelt parameter in a PostgreSQL URL, or an unclosed IPv6 bracket: one line saying
    what libpq could not read, with the URL's password hidden (it was psycopg's 177-line
    traceback: the refusal was read on a second attempt to connect, which raised again)."""
    done = stateward(home, "server", "start", "--port", "0", "--db", url, "--no-ui")
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith("Error: ") and said in line and "secret-pw" not in line, line
    assert "is not a PostgreSQL URL libpq can read" in line, line


@pytest.mark.parametrize("mistake", ["password", "database"])
def test_a_wrong_postgresql_password_or_database_name_is_one_line(
    home: Path, postgres_databases: PostgresDatabases, mistake: str
) -> None:
    """The server answered, and refused: not "unreachable", and what to check or do."""
    url = postgres_databases.url
    if mistake == "password":
        url = re.sub(r"(://[^:/@]+):[^@]*@", r"\1:not-the-password@", url)
    else:
        url = re.sub(r"/[^/?]+(\?|$)", r"/stateward_no_such_database\1", url, count=1)
    done = stateward(home, "server", "start", "--port", "0", "--db", url, "--no-ui")
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith("Error: ") and "not-the-password" not in line, line
    if mistake == "password":
        said = "refused the connection (password authentication failed for user"
        advice = "check the user and password in the URL"
    else:
        said = 'refused the connection (database "stateward_no_such_database" does not exist)'
        advice = "create it (CREATE DATABASE stateward_no_such_database, as a user that may)"
    assert said in line and advice in line and "unreachable" not in line, line
