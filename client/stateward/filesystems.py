"""Where results can be stored: a folder on this machine.

`result_storage=` takes a folder's path (str or `pathlib.Path`) or `LocalFileSystem(basepath=...)`,
the reference's usual spelling of the same thing.
"""

from __future__ import annotations

import os
from pathlib import Path

from stateward._records import dataclass

__all__ = ["LocalFileSystem"]


@dataclass(frozen=True)
class LocalFileSystem:
    """A folder on this machine for results: `basepath` (created when first written to)."""

    basepath: str | os.PathLike[str]

    @property
    def path(self) -> Path:
        """The folder, as an absolute path (`~` expanded; relative to the current folder)."""
        return Path(self.basepath).expanduser().absolute()
