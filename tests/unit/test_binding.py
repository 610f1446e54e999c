"""How a task's or flow's call binds its arguments: the quick path for functions whose
parameters all take keywords answers exactly as `inspect.Signature.bind` does (the same
arguments in the same order; for a mistake, a ParameterBindError, a TypeError carrying the
signature's), and the function gets them back."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from stateward._outcomes import bind, call_with
from stateward.exceptions import ParameterBindError


def keywords(a: Any, b: Any = 2, *, c: Any = 3) -> Any:
    return a, b, c


def positional_only(a: Any, /, b: Any) -> Any:
    return a, b


def variadic(a: Any, *rest: Any, k: Any = 1, **more: Any) -> Any:
    return a, rest, k, more


def nothing() -> Any:
    return None


def reference(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as error:
        return "TypeError", str(error)
    bound.apply_defaults()
    return list(bound.arguments.items())


CALLS = [
    (keywords, (1,), {}),
    (keywords, (1, 5), {"c": 4}),
    (keywords, (), {"b": 1, "a": 2}),
    (keywords, (1,), {"a": 2}),  # twice
    (keywords, (1, 2, 3), {}),  # c takes no position
    (keywords, (), {}),  # a is missing
    (keywords, (1,), {"d": 1}),  # no such parameter
    (positional_only, (1, 2), {}),
    (positional_only, (1,), {"b": 2}),
    (positional_only, (), {"a": 1, "b": 2}),
    (variadic, (1, 2, 3), {"x": 1}),
    (variadic, (1,), {"k": 2}),
    (nothing, (), {}),
    (nothing, (1,), {}),
]


@pytest.mark.parametrize(("fn", "args", "kwargs"), CALLS)
def test_binding_answers_as_the_signature_does(fn: Any, args: Any, kwargs: Any) -> None:
    try:
        got: Any = list(bind(inspect.signature(fn), args, kwargs, fn.__name__).items())
    except ParameterBindError as error:  # a TypeError naming the function, with the signature's
        assert str(error).startswith(f"{fn.__name__}() cannot be called with these arguments: ")
        assert str(error.__context__) in str(error)
        got = "TypeError", str(error.__context__)
    assert got == reference(fn, args, kwargs)
    if isinstance(got, list):
        assert call_with(fn, inspect.signature(fn), dict(got)) == fn(*args, **kwargs)
