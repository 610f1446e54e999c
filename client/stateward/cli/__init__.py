"""The `stateward` command line."""

from __future__ import annotations

from stateward.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
