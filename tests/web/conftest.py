"""A real server with its web view on a free port, shared by the web tests (each makes its own
runs, under a flow name or tag of its own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import ServerProcess, running_server


@pytest.fixture(scope="session")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("web"), ui=True, args=["--ui-heartbeat", "0.5"]
    ) as process:
        yield process
