"""`dataclass`, as the standard library's, made without compiling source for `__repr__`,
`__eq__` and `__hash__`.

On Python 3.11 and 3.12, `dataclasses.dataclass` writes each method it adds as source text and
runs `exec` on it: a frozen class costs six (`__init__`, `__repr__`, `__eq__`, `__hash__`,
`__setattr__`, `__delattr__`), and parsing and compiling them was a quarter of the instructions a
first flow run costs in a fresh process (46 classes on its path). This `dataclass` lets the
standard library make the class without `__repr__` and `__eq__` (its `__init__` and the frozen
methods are its own), then adds the three methods as closures over the fields' names, which do
what the generated ones do: the same text, the same comparisons (`NotImplemented` for another
class), the same hash, the same `...` for a recursive repr. The class's `__dataclass_params__`
then say what was asked for, so that `dataclasses.fields`, `replace`, pickling and a subclass
made with `dataclasses.dataclass` see a standard dataclass. Options it does not handle itself
(`order`, `unsafe_hash`) go to `dataclasses.dataclass` unchanged, and so does every class on
Python 3.13 and later, which compiles a class's methods in one go.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from operator import attrgetter
from threading import get_ident
from typing import Any, TypeVar, dataclass_transform, overload

__all__ = ["dataclass"]

_T = TypeVar("_T")


def _values_of(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function giving the tuple of an object's attributes `names` (as `(self.a, self.b,)`)."""
    if len(names) >= 2:
        return attrgetter(*names)
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda item: (one(item),)
    return lambda item: ()


def _repr_method(names: tuple[str, ...]) -> Callable[[Any], str]:
    running: set[tuple[int, int]] = set()

    def __repr__(self: Any) -> str:
        key = id(self), get_ident()
        if key in running:
            return "..."
        running.add(key)
        try:
            parts = [f"{name}={getattr(self, name)!r}" for name in names]
            return f"{self.__class__.__qualname__}({', '.join(parts)})"
        finally:
            running.discard(key)

    return __repr__


def _eq_method(names: tuple[str, ...]) -> Callable[[Any, object], Any]:
    values = _values_of(names)

    def __eq__(self: Any, other: object) -> Any:
        if other.__class__ is self.__class__:
            return values(self) == values(other)
        return NotImplemented

    return __eq__


def _hash_method(names: tuple[str, ...]) -> Callable[[Any], int]:
    values = _values_of(names)

    def __hash__(self: Any) -> int:
        return hash(values(self))

    return __hash__


def _set_method(cls: type, name: str, method: Callable[..., Any]) -> None:
    method.__qualname__ = f"{cls.__qualname__}.{name}"
    setattr(cls, name, method)


def _process(
    cls: type[_T],
    *,
    init: bool,
    repr: bool,
    eq: bool,
    frozen: bool,
    match_args: bool,
    kw_only: bool,
    slots: bool,
) -> type[_T]:
    # As the standard library decides it, from the class body: was __hash__ written in it (a
    # body that defines __eq__ gets __hash__ = None from Python, which does not count)?
    class_hash = cls.__dict__.get("__hash__", dataclasses.MISSING)
    explicit_hash = not (
        class_hash is dataclasses.MISSING or (class_hash is None and "__eq__" in cls.__dict__)
    )
    made: type[_T] = dataclasses.dataclass(
        cls,
        init=init,
        repr=False,
        eq=False,
        frozen=frozen,
        match_args=match_args,
        kw_only=kw_only,
        slots=slots,
    )
    fields = dataclasses.fields(made)  # type: ignore[arg-type]
    if repr and "__repr__" not in made.__dict__:
        _set_method(made, "__repr__", _repr_method(tuple(f.name for f in fields if f.repr)))
    compared = tuple(f.name for f in fields if f.compare)
    if eq and "__eq__" not in made.__dict__:
        _set_method(made, "__eq__", _eq_method(compared))
    if eq and not explicit_hash:
        # The standard library's table for unsafe_hash=False: a frozen class hashes its
        # compared fields (or those whose field says hash=True), another is unhashable.
        if frozen:
            hashed = tuple(f.name for f in fields if (f.compare if f.hash is None else f.hash))
            _set_method(made, "__hash__", _hash_method(hashed))
        else:
            made.__hash__ = None  # type: ignore[assignment]
    params = made.__dataclass_params__  # type: ignore[attr-defined]
    params.repr = repr
    params.eq = eq
    return made


@overload
def dataclass(
    cls: type[_T],
    /,
    *,
    init: bool = True,
    repr: bool = True,
    eq: bool = True,
    order: bool = False,
    unsafe_hash: bool = False,
    frozen: bool = False,
    match_args: bool = True,
    kw_only: bool = False,
    slots: bool = False,
) -> type[_T]: ...


@overload
def dataclass(
    cls: None = None,
    /,
    *,
    init: bool = True,
    repr: bool = True,
    eq: bool = True,
    order: bool = False,
    unsafe_hash: bool = False,
    frozen: bool = False,
    match_args: bool = True,
    kw_only: bool = False,
    slots: bool = False,
) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(field_specifiers=(dataclasses.field, dataclasses.Field))
def dataclass(
    cls: type[_T] | None = None,
    /,
    *,
    init: bool = True,
    repr: bool = True,
    eq: bool = True,
    order: bool = False,
    unsafe_hash: bool = False,
    frozen: bool = False,
    match_args: bool = True,
    kw_only: bool = False,
    slots: bool = False,
) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """`dataclasses.dataclass` with the same parameters and the same result (see the module's
    docstring for what it does otherwise): used bare (`@dataclass`) it takes the class and
    returns the dataclass; with parameters it returns the decorator. Raises what
    `dataclasses.dataclass` raises for the class."""

    def wrap(cls: type[_T]) -> type[_T]:
        if order or unsafe_hash or sys.version_info >= (3, 13):
            return dataclasses.dataclass(
                cls,
                init=init,
                repr=repr,
                eq=eq,
                order=order,
                unsafe_hash=unsafe_hash,
                frozen=frozen,
                match_args=match_args,
                kw_only=kw_only,
                slots=slots,
            )
        return _process(
            cls,
            init=init,
            repr=repr,
            eq=eq,
            frozen=frozen,
            match_args=match_args,
            kw_only=kw_only,
            slots=slots,
        )

    if cls is None:
        return wrap
    return wrap(cls)
