"""Wrappers around a task's arguments that change how the SDK treats them:

- `unmapped(x)`: `Task.map` passes `x` whole to every mapped run instead of iterating it.
- `allow_failure(future)`: the downstream run starts even if that upstream run did not
  complete; it receives the upstream's exception (or None) as the value.
- `quote(value)`: the value is passed as it is; futures and states inside it are not resolved.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class BaseAnnotation(Generic[T]):
    """A wrapped argument; `unwrap()` gives the value back."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def unwrap(self) -> T:
        return self.value

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BaseAnnotation)
            and type(other) is type(self)
            and self.value == other.value
        )

    def __hash__(self) -> int:
        return hash((type(self), id(self.value)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"


class unmapped(BaseAnnotation[T]):
    """An argument of `Task.map` that every mapped run gets whole."""


class allow_failure(BaseAnnotation[T]):
    """An upstream future (or state) whose failure does not stop the downstream run: the run
    gets the upstream's result if it completed, else its exception (or None) as the value.
    Works as an argument and in `wait_for`."""


class quote(BaseAnnotation[T]):
    """A value passed to the run exactly as it is: futures and states inside it are not
    waited for or resolved (and a large collection is not walked). `unquote()` gives it back."""

    def unquote(self) -> T:
        return self.value


__all__ = ["BaseAnnotation", "allow_failure", "quote", "unmapped"]
