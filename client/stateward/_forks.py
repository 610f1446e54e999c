"""How many forks made this process, counted in each child: an object made when the count was
lower (a gRPC channel, the embedded orchestrator's database connection, a flow run under way)
belongs to an ancestor, whose threads did not come along. Read as `_forks.count`: a module
attribute is cheaper to compare on every call than `os.getpid()` (a system call's worth of C).
"""

from __future__ import annotations

import os

count = 0


def _count_fork() -> None:
    global count
    count += 1


os.register_at_fork(after_in_child=_count_fork)
