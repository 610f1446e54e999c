"""The client's settings (`stateward.settings`): each read takes the variable as it is now."""

from __future__ import annotations

import pytest

from stateward import settings
from stateward.exceptions import InvalidSetting


def test_a_storage_path_that_became_a_file_is_refused_at_the_next_read(tmp_path, monkeypatch):
    """Outside a flow run each read checks the variable anew (a flow run reads it once, for
    its task runs). (A value was parsed once per text: a folder path that then named a file
    was taken until the process ended, and results were written to it.)"""
    target = tmp_path / "results"
    monkeypatch.setenv("STATEWARD_RESULTS_STORAGE_PATH", str(target))
    assert settings.results_storage_path() == target  # missing: made when a result is written
    target.write_text("not a folder")
    with pytest.raises(InvalidSetting, match="is not a folder"):
        settings.results_storage_path()


def test_a_changed_value_is_read_as_it_is_now(monkeypatch):
    monkeypatch.setenv("STATEWARD_MAX_RESULT_BYTES", "1000")
    assert settings.max_result_bytes() == 1000
    monkeypatch.setenv("STATEWARD_MAX_RESULT_BYTES", "2000")
    assert settings.max_result_bytes() == 2000
    monkeypatch.setenv("STATEWARD_MAX_RESULT_BYTES", "lots")
    with pytest.raises(InvalidSetting, match="STATEWARD_MAX_RESULT_BYTES"):
        settings.max_result_bytes()
