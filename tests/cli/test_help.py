"""Every help page as a newcomer reads it: each option's value is named by what to type (NAME,
N, WHEN), a flag has no label, and no page shows a Python type (`<list[str]>`, `<bool>`,
`<int range> [x>=1]`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cli.conftest import stateward

# typer's labels: <bool>, <str>, <int>, <path>, <datetime>, <list[str]>, <int range> [0<=x<=9]
PYTHON_LABEL = re.compile(r"<(bool|str|int|float|path|datetime|list\[.*?\]|\w+ range)>|x<=|x>=")


def help_pages(home: Path) -> dict[str, str]:
    """`stateward ... --help` of the command and every group and command under it, by path."""
    pages: dict[str, str] = {}
    waiting: list[list[str]] = [[]]
    while waiting:
        path = waiting.pop()
        done = stateward(home, *path, "--help", env={"COLUMNS": "200"})
        assert done.returncode == 0, done.stderr
        pages[" ".join(["stateward", *path])] = done.stdout
        panel = done.stdout.partition("─ Commands ")[2].partition("╰")[0]
        for row in panel.splitlines()[1:]:
            if not row.startswith("│  "):  # not the wrapped end of a command's help
                waiting.append([*path, row.strip("│ ").split(" ")[0]])
    return pages


def option_row(page: str, option: str) -> str:
    """The help row of `option`: the option, its value's label and its help, spaces squeezed."""
    for line in page.splitlines():
        words = line.strip("│ *").split()  # a required argument's row starts with "*"
        if words and words[0] == option:
            return " ".join(words)
    raise AssertionError(f"no row for {option} in\n{page}")


def test_no_help_page_labels_a_value_with_a_python_type(home: Path) -> None:
    pages = help_pages(home)
    assert {"stateward flow-run ls", "stateward concurrency-limit create", "stateward ui"} <= set(
        pages
    )
    assert len(pages) >= 18, sorted(pages)
    for path, page in pages.items():
        assert not PYTHON_LABEL.search(page), f"{path} --help:\n{page}"
        if "╭─ Options" in page:  # the server's start page is click's plain text
            assert option_row(page, "--help") == "--help Show this message and exit.", path


@pytest.mark.parametrize(
    ("command", "row"),
    [
        (["flow-run", "ls"], "--flow NAME Only runs of this flow. Repeat it for more"),
        (["flow-run", "ls"], "--tag TAG Only runs with this tag. Repeat it for more"),
        (["task-run", "ls"], "--limit N At most N runs (1 or more). [default: 20]"),
        (["task-run", "ls"], "--flow-run RUN Only task runs of this flow run"),
        (["flow-run", "logs"], "--follow -f Keep showing lines until the run ends."),
        (["watch"], "--after SEQUENCE Replay from after this sequence number"),
        (["watch"], "--from-start Replay the log first"),
        (["ui"], "--port PORT Port, 0 to 65535"),
        (["db", "backup"], "--db FILE The database"),
        (["concurrency-limit", "create"], "LIMIT How many task runs with it may run at once"),
        ([], "--version Print the version and exit."),
        (["server", "start"], "--port PORT Port; 0 picks a free one."),
        (["server", "start"], "--db FILE|URL SQLite file, or a PostgreSQL URL"),
        (["server", "start"], "--log-retention N Keep the newest N transitions"),
        (["server", "start"], "--tls-cert FILE TLS certificate chain"),
    ],
)
def test_each_value_is_named_by_what_to_type(home: Path, command: list[str], row: str) -> None:
    done = stateward(home, *command, "--help", env={"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    first = row.split()[0]
    assert option_row(done.stdout, first).startswith(row), done.stdout
