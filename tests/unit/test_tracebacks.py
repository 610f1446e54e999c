"""user_traceback: a failed run's traceback without the SDK's and the standard library's frames
before and between the user's; such frames after the user's last one stay (but for the SDK's own
exceptions and KeyboardInterrupt), and so does a traceback with none of the user's. Code is
compiled under file names inside and outside the SDK's and the standard library's folders."""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Callable
from typing import Any

import stateward
from stateward._signals import TerminationSignal
from stateward._tracebacks import user_traceback
from stateward.exceptions import ServerUnavailable

SDK = os.path.join(os.path.dirname(os.path.abspath(stateward.__file__)), "_engine_like.py")
USER = os.path.join(os.sep, "home", "ann", "pipeline.py")


def define(filename: str, source: str, **names: Any) -> dict[str, Any]:
    namespace: dict[str, Any] = dict(names)
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def failure(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except BaseException as error:
        return error
    raise AssertionError("it did not fail")


def files_of(shown: str) -> list[str]:
    """The files of the frames shown, but this test's own (which calls the code)."""
    files = [line.split('"')[1] for line in shown.splitlines() if line.startswith('  File "')]
    return [name for name in files if name != __file__]


def test_the_sdks_frames_around_the_users_are_left_out() -> None:
    user = define(
        USER, "def load(n):\n    return parse(n)\n\ndef parse(n):\n    raise ValueError(n)\n"
    )
    sdk = define(SDK, "def run(fn):\n    return call(fn)\n\ndef call(fn):\n    return fn(3)\n")
    error = failure(lambda: sdk["run"](user["load"]))
    shown = user_traceback(error)
    assert files_of(shown) == [USER, USER]
    assert shown.startswith("Traceback (most recent call last):\n")
    assert shown.endswith("ValueError: 3")
    assert ", in load\n" in shown and ", in parse\n" in shown


def test_the_sdks_frames_after_the_users_last_stay_where_the_sdk_raised() -> None:
    sdk = define(
        SDK,
        "def run(fn):\n    return fn()\n\ndef submit(x):\n    raise TypeError('needs a list')\n",
    )
    user = define(USER, "def flow_body():\n    return submit(5)\n", submit=sdk["submit"])
    shown = user_traceback(failure(lambda: sdk["run"](user["flow_body"])))
    assert files_of(shown) == [USER, SDK]
    assert shown.endswith("TypeError: needs a list")


def test_a_traceback_of_the_sdk_alone_is_shown_whole() -> None:
    sdk = define(SDK, "def run():\n    return check()\n\ndef check():\n    raise KeyError('x')\n")
    shown = user_traceback(failure(sdk["run"]))
    assert files_of(shown)[-2:] == [SDK, SDK]


def test_causes_and_contexts_are_trimmed_too() -> None:
    user = define(
        USER,
        "def load():\n    try:\n        int('x')\n    except ValueError as e:\n"
        "        raise RuntimeError('bad input') from e\n",
    )
    sdk = define(SDK, "def run(fn):\n    return fn()\n")
    shown = user_traceback(failure(lambda: sdk["run"](user["load"])))
    assert SDK not in shown
    assert "The above exception was the direct cause" in shown
    assert "ValueError: invalid literal" in shown and shown.endswith("RuntimeError: bad input")


STDLIB = os.path.join(sysconfig.get_paths()["stdlib"], "asyncio", "runner_like.py")


def test_the_standard_librarys_frames_around_the_users_are_left_out() -> None:
    user = define(USER, "def body(n):\n    raise ValueError(n)\n")
    stdlib = define(STDLIB, "def run(fn):\n    return fn(7)\n")
    sdk = define(SDK, "def call(fn):\n    return fn()\n")
    shown = user_traceback(failure(lambda: sdk["call"](lambda: stdlib["run"](user["body"]))))
    assert files_of(shown) == [USER]
    assert shown.endswith("ValueError: 7")


# The base Python's own site-packages, as a venv made with --system-site-packages (or a system
# Python, whose site-packages is inside its standard library's folder) imports packages from.
BASE_SITE_PACKAGE = os.path.join(sysconfig.get_paths()["stdlib"], "site-packages", "pkg", "cb.py")


def test_a_package_installed_in_the_standard_librarys_folder_keeps_its_frames() -> None:
    """A package in the base Python's site-packages is not the standard library: its frames
    between the user's stay (they were left out: the file is under the stdlib folder)."""
    user = define(
        USER,
        "def flow_body(apply):\n    return apply(check)\n\ndef check():\n"
        "    raise ValueError('bad row')\n",
    )
    package = define(BASE_SITE_PACKAGE, "def apply(fn):\n    return fn()\n")
    shown = user_traceback(failure(lambda: user["flow_body"](package["apply"])))
    assert files_of(shown) == [USER, BASE_SITE_PACKAGE, USER]
    assert shown.endswith("ValueError: bad row")


def test_a_standard_library_function_that_raised_keeps_its_frames() -> None:
    user = define(USER, "import json\ndef parse(text):\n    return json.loads(text)\n")
    shown = user_traceback(failure(lambda: user["parse"]("{")))
    assert files_of(shown)[0] == USER
    assert any(name.endswith(os.path.join("json", "decoder.py")) for name in files_of(shown))


def test_the_sdks_own_exception_shows_the_users_frames_alone() -> None:
    sdk = define(
        SDK,
        "def connect():\n    return reach()\n\ndef reach():\n    raise Unreachable('start one')\n",
        Unreachable=ServerUnavailable,
    )
    stdlib = define(STDLIB, "def to_thread(fn):\n    return fn()\n")
    user = define(
        USER,
        "def main():\n    return to_thread(connect)\n",
        to_thread=stdlib["to_thread"],
        connect=sdk["connect"],
    )
    shown = user_traceback(failure(user["main"]))
    assert files_of(shown) == [USER]
    assert shown.endswith("ServerUnavailable: start one")


def test_a_keyboard_interrupt_leaves_the_sdks_signal_handler_out() -> None:
    sdk = define(SDK, "def on_signal():\n    raise KeyboardInterrupt\n")
    user = define(USER, "def work():\n    return on_signal()\n", on_signal=sdk["on_signal"])
    shown = user_traceback(failure(user["work"]))
    assert files_of(shown) == [USER]
    assert shown.endswith("KeyboardInterrupt")


def test_a_sigterm_leaves_the_sdks_signal_handler_out() -> None:
    sdk = define(
        SDK, "def on_signal():\n    raise Terminated('SIGTERM')\n", Terminated=TerminationSignal
    )
    user = define(USER, "def work():\n    return on_signal()\n", on_signal=sdk["on_signal"])
    shown = user_traceback(failure(user["work"]))
    assert files_of(shown) == [USER]
    assert shown.endswith("TerminationSignal: SIGTERM")
