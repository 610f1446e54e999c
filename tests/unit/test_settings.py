"""Server settings: defaults, then environment variables, then flags."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from stateward_service.settings import ENVIRONMENT, ServerSettings


def test_every_setting_has_an_environment_variable():
    assert set(ENVIRONMENT) == {f.name for f in fields(ServerSettings)}


def test_environment_variables_override_defaults_and_flags_override_both(monkeypatch, tmp_path):
    monkeypatch.setenv("STATEWARD_HOME", str(tmp_path))
    assert ServerSettings.from_environment().db == tmp_path / "stateward.db"
    monkeypatch.setenv("STATEWARD_LATE_AFTER_SECONDS", "2.5")
    monkeypatch.setenv("STATEWARD_PORT", "9999")
    monkeypatch.setenv("STATEWARD_DB", "~/x.db")
    settings = ServerSettings.from_environment(port=1234, cancelling_timeout_seconds=None)
    assert settings.late_after_seconds == 2.5
    assert settings.port == 1234
    assert settings.db == Path("~/x.db").expanduser()
    assert settings.cancelling_timeout_seconds == 300.0
    assert settings.loops().late_after_seconds == 2.5
