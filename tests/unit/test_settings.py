"""Server settings: declared once, read from defaults, then environment variables, then flags;
validated, with one line naming the setting and what it allows."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stateward_service.settings import ServerSettings, SettingError, declarations
from tests.support import ROOT


def test_every_setting_declares_its_environment_variable_and_help():
    declared = list(declarations())
    assert [d.name for d in declared] == [f.name for f in dataclasses.fields(ServerSettings)]
    assert all(d.env.startswith("STATEWARD_") and d.help for d in declared)
    assert len({d.env for d in declared}) == len(declared)
    assert len({d.flag for d in declared}) == len(declared)


def test_the_defaults_are_values_the_validation_allows():
    # Defaults are used as declared, unvalidated (so that a process given no setting needs no
    # pydantic): each must be what validating it gives.
    defaults = ServerSettings.from_environment()
    given = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(ServerSettings)}
    assert ServerSettings.from_environment(**given) == defaults


def test_environment_variables_override_defaults_and_flags_override_both(monkeypatch, tmp_path):
    monkeypatch.setenv("STATEWARD_HOME", str(tmp_path))
    assert ServerSettings.from_environment().db == str(tmp_path / "stateward.db")
    monkeypatch.setenv("STATEWARD_LATE_AFTER_SECONDS", "2.5")
    monkeypatch.setenv("STATEWARD_PORT", "9999")
    monkeypatch.setenv("STATEWARD_DB", "~/x.db")
    monkeypatch.setenv("STATEWARD_SLOT_WAIT_SECONDS", "")  # empty: unset
    settings = ServerSettings.from_environment(port="1234", cancelling_timeout_seconds=None)
    assert settings.late_after_seconds == 2.5
    assert settings.port == 1234
    assert settings.db == str(Path("~/x.db").expanduser())
    assert settings.cancelling_timeout_seconds == 300.0
    assert settings.slot_wait_seconds == 1.0


def test_a_postgres_url_is_the_database_as_given(monkeypatch):
    url = "postgresql://user:secret@db.internal:5432/stateward"
    assert ServerSettings.from_environment(db=url).database == url
    monkeypatch.setenv("STATEWARD_DATABASE_URL", url)
    assert ServerSettings.from_environment(db="/tmp/x.db").database == url
    monkeypatch.setenv("STATEWARD_DATABASE_URL", "/tmp/x.db")
    with pytest.raises(SettingError) as refused:
        ServerSettings.from_environment()
    # It says what is allowed: the value is text, but not a PostgreSQL URL.
    assert str(refused.value) == (
        "STATEWARD_DATABASE_URL=/tmp/x.db is not allowed (the database_url setting): it must "
        "be a postgresql:// or postgres:// URL"
    )


def test_enumerations_accept_their_values_in_any_case_and_nothing_else():
    assert ServerSettings.from_environment(sqlite_synchronous="full").sqlite_synchronous == "FULL"
    with pytest.raises(SettingError) as raised:
        ServerSettings.from_environment(sqlite_synchronous="SLOW")
    assert str(raised.value) == (
        "--sqlite-synchronous SLOW is not allowed (the sqlite_synchronous setting): "
        "it must be one of OFF, NORMAL, FULL, EXTRA"
    )


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("port", "65536", "a whole number from 0 to 65535"),
        ("port", "-1", "a whole number from 0 to 65535"),
        ("metrics_port", "http", "a whole number from 0 to 65535"),
        ("late_after_seconds", "-0.5", "a number of seconds from 0 to 315,360,000"),
        # Past ten years, a number of seconds is a mistake, and the sweeps' date arithmetic
        # overflowed on it (every cancelling sweep logged an OverflowError for inf).
        ("cancelling_timeout_seconds", "inf", "a number of seconds from 0 to 315,360,000"),
        ("late_after_seconds", "1e300", "a number of seconds from 0 to 315,360,000"),
        # 0 between sweeps swept without pause, hammering the database from a busy thread.
        ("late_runs_interval_seconds", "0", "a number of seconds from 0.1 to 315,360,000"),
        ("lease_check_interval_seconds", "0.05", "a number of seconds from 0.1 to 315,360,000"),
        ("ui_heartbeat_seconds", "nan", "a number of seconds from 0.1 to 315,360,000"),
        ("stream_buffer", "0", "a whole number, at least 1"),
        ("max_message_bytes", "1023", "a whole number, at least 1024"),
    ],
)
def test_values_out_of_range_are_refused_with_the_allowed_range(name, value, allowed):
    with pytest.raises(SettingError, match=f"the {name} setting.*it must be {allowed}$"):
        ServerSettings.from_environment(**{name: value})


def test_a_bad_environment_variable_is_named(monkeypatch):
    monkeypatch.setenv("STATEWARD_STREAM_BUFFER", "lots")
    with pytest.raises(SettingError, match=r"^STATEWARD_STREAM_BUFFER=lots is not allowed"):
        ServerSettings.from_environment()
    # A flag given for the same setting does not hide it: every command run without the flag
    # reads it, so it is refused here too, saying so.
    with pytest.raises(SettingError) as refused:
        ServerSettings.from_environment(stream_buffer="5")
    assert str(refused.value) == (
        "STATEWARD_STREAM_BUFFER=lots is not allowed (the stream_buffer setting): it must be a "
        "whole number, at least 1; --stream-buffer overrides it here, but every command "
        "without that flag reads it: correct it or unset STATEWARD_STREAM_BUFFER"
    )
    monkeypatch.setenv("STATEWARD_STREAM_BUFFER", "7")  # a good one, overridden: the flag wins
    assert ServerSettings.from_environment(stream_buffer="5").stream_buffer == 5


def test_an_overridden_variable_is_checked_against_the_settings_in_use(monkeypatch, tmp_path):
    """The check of a variable a flag overrides takes the other settings as given: a default
    that is not used (the database under STATEWARD_HOME, with --db given) is not worked out.
    (It was: STATEWARD_HOME naming a file refused a server given --db, but only while a good
    STATEWARD_STREAM_BUFFER was overridden by --stream-buffer.)"""
    home_file = tmp_path / "not-a-folder"
    home_file.write_text("")
    monkeypatch.setenv("STATEWARD_HOME", str(home_file))
    monkeypatch.setenv("STATEWARD_STREAM_BUFFER", "7")
    db = str(tmp_path / "given.db")
    settings = ServerSettings.from_environment(stream_buffer="5", db=db)
    assert (settings.stream_buffer, settings.db) == (5, db)
    monkeypatch.setenv("STATEWARD_STREAM_BUFFER", "lots")  # a bad one is still refused
    with pytest.raises(SettingError, match=r"^STATEWARD_STREAM_BUFFER=lots .* overrides it"):
        ServerSettings.from_environment(stream_buffer="5", db=db)


def _server_start(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stateward", "server", "start", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250", **(env or {})},
        cwd=ROOT,
        timeout=60,
    )


def test_the_command_refuses_a_bad_flag_or_variable_in_one_line(tmp_path):
    db = str(tmp_path / "never.db")
    bad_flag = _server_start("--db", db, "--sqlite-synchronous", "sometimes")
    assert bad_flag.returncode != 0
    assert bad_flag.stderr.strip().splitlines() == [
        "Error: --sqlite-synchronous sometimes is not allowed (the sqlite_synchronous "
        "setting): it must be one of OFF, NORMAL, FULL, EXTRA"
    ]
    bad_variable = _server_start("--db", db, env={"STATEWARD_PORT": "70000"})
    assert bad_variable.returncode != 0
    assert bad_variable.stderr.strip().splitlines() == [
        "Error: STATEWARD_PORT=70000 is not allowed (the port setting): it must be a whole "
        "number from 0 to 65535"
    ]
    assert not Path(db).exists()  # refused before anything was opened
    overridden = _server_start("--db", db, "--port", "0", env={"STATEWARD_PORT": "abc"})
    assert overridden.returncode != 0
    assert overridden.stderr.strip().splitlines() == [
        "Error: STATEWARD_PORT=abc is not allowed (the port setting): it must be a whole number "
        "from 0 to 65535; --port overrides it here, but every command without that flag reads "
        "it: correct it or unset STATEWARD_PORT"
    ]
    assert not Path(db).exists()


def test_help_shows_every_setting_with_its_flag_variable_and_default():
    shown = _server_start("--help")
    assert shown.returncode == 0
    # One entry per option: its first line starts with the flag, the help wraps below it.
    entries: list[str] = []
    for line in shown.stdout.splitlines():
        if line.startswith("  -"):
            entries.append(line)
        elif entries and line.startswith("   "):
            entries[-1] += " " + line.strip()
    for declared in declarations():
        entry = " ".join(next(e for e in entries if f" {declared.flag} " in f"{e} ").split())
        assert declared.env in entry
        if declared.default:
            assert f"default {declared.default})" in entry


def test_the_api_key_is_not_in_the_settings_repr(monkeypatch):
    monkeypatch.setenv("STATEWARD_API_KEY", "s3cret-key-value")
    settings = ServerSettings.from_environment()
    assert settings.api_key == "s3cret-key-value"
    assert "s3cret-key-value" not in repr(settings)
    assert "port=" in repr(settings)
