"""The `stateward` command line."""

from __future__ import annotations

import sys

from stateward.cli.app import app
from stateward.exceptions import StatewardError


def main() -> None:
    """Run the command. A Stateward error (a setting that cannot be right, a server that cannot
    be reached) or a file the command cannot use is one line on stderr and exit status 1, not a
    traceback."""
    try:
        app()
    except StatewardError as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        print(f"Error: {error.strerror or error}{where}", file=sys.stderr)
        sys.exit(1)


__all__ = ["app", "main"]
