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

A frozen, slotted record without dataclass bases can go further with `quick=True`: its
`__setattr__` and `__delattr__` are closures too, and its `__init__` is `quick_init`'s, which
assigns each field with the instance's class switched for a moment to one with the same slots and
no methods (`unfrozen`), so that Python stores each at its slot directly (one `exec` for the class
instead of six).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from operator import attrgetter
from threading import get_ident
from typing import Any, Generic, TypeVar, dataclass_transform, overload

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


def _frozen_methods(
    cls: type, names: tuple[str, ...]
) -> tuple[Callable[[Any, str, Any], None], Callable[[Any, str], None]]:
    """`__setattr__` and `__delattr__` refusing to change a field of an instance of `cls` (any
    attribute, when the instance's class is `cls` itself), as a frozen dataclass's."""

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in names:
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)  # type: ignore[arg-type]

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)  # type: ignore[arg-type]

    return __setattr__, __delattr__


def _getstate(self: Any) -> list[Any]:
    """A frozen slotted record's state for pickle: its fields' values, as dataclasses gives."""
    return [getattr(self, item.name) for item in dataclasses.fields(self)]


def _setstate(self: Any, state: list[Any]) -> None:
    for item, value in zip(dataclasses.fields(self), state, strict=False):
        object.__setattr__(self, item.name, value)


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
    quick: bool,
) -> type[_T]:
    if quick:
        if not (frozen and slots):
            raise TypeError(f"{cls.__name__}: a quick record is frozen and slotted")
        for base in cls.__mro__[1:]:
            if hasattr(base, "__dataclass_fields__"):
                raise TypeError(f"{cls.__name__}: a quick record has no dataclass base")
        for name in ("__setattr__", "__delattr__"):
            if name in cls.__dict__:  # as dataclasses refuses it for a frozen class
                raise TypeError(f"Cannot overwrite attribute {name} in class {cls.__name__}")
        documented = bool(cls.__doc__)
        if not documented:
            # Written below, from quick_init's __init__: dataclasses would write the signature of
            # object's, read from its text by tokenize (17M instructions for the 10 records).
            cls.__doc__ = "(the signature of its __init__)"
    # As the standard library decides it, from the class body: was __hash__ written in it (a
    # body that defines __eq__ gets __hash__ = None from Python, which does not count)?
    class_hash = cls.__dict__.get("__hash__", dataclasses.MISSING)
    explicit_hash = not (
        class_hash is dataclasses.MISSING or (class_hash is None and "__eq__" in cls.__dict__)
    )
    made: type[_T] = dataclasses.dataclass(
        cls,
        init=init and not quick,
        repr=False,
        eq=False,
        frozen=frozen and not quick,
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
    if quick:
        if init:
            quick_init(made)  # raises TypeError for a field it cannot set
        field_names = tuple(item.name for item in fields)
        for method in _frozen_methods(made, field_names):
            _set_method(made, method.__name__, method)
        if "__getstate__" not in made.__dict__:  # as dataclasses does for a frozen slotted class
            setattr(made, "__getstate__", _getstate)  # noqa: B010 - mypy refuses a method
        if "__setstate__" not in made.__dict__:
            setattr(made, "__setstate__", _setstate)  # noqa: B010
        params.init = init
        params.frozen = True
        if not documented:  # dataclasses writes the signature of its __init__ as the doc
            import inspect

            text = str(inspect.signature(made)).replace(" -> None", "")
            made.__doc__ = made.__name__ + text
    return made


class _FactoryDefault:
    """The default of a field with a default factory: the argument was not given."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY_DEFAULT = _FactoryDefault()


_set_class = object.__setattr__  # `_set_class(instance, "__class__", cls)`


def unfrozen(cls: type) -> type | None:
    """A class with the slots of the frozen, slotted class `cls` and nothing else: an instance
    of `cls` whose class is set to it for a moment (`object.__setattr__(self, "__class__",
    twin)`, then `self.__class__ = cls`) takes its fields by plain assignment, which Python
    specialises to a store at the slot's place, several times quicker than calling each
    slot's `__set__` (a frozen class's own `__setattr__` refuses, so assignments to its
    instances are never specialised). None when the layouts do not allow the switch. Made once
    per class."""
    twin = _TWINS.get(cls)
    if twin is None and cls not in _TWINS:
        namespace = {
            "__slots__": cls.__dict__.get("__slots__", ()),
            "__module__": cls.__module__,
            "__doc__": f"The slots of {cls.__name__} alone (see stateward._records.unfrozen).",
        }
        # Its own bases when they may be bases again (not `Generic`, say), else object: the
        # probe below says whether the layouts match.
        bases = tuple(base for base in cls.__bases__ if base is not Generic) or (object,)
        made: type | None = type(f"{cls.__name__}Fields", bases, namespace)
        try:  # the switch works both ways for these layouts, or not at all
            probe: object = object.__new__(cls)
            _set_class(probe, "__class__", made)
            _set_class(probe, "__class__", cls)
        except TypeError:
            made = None
        twin = _TWINS[cls] = made
    return twin


_TWINS: dict[type, type | None] = {}


def quick_init(cls: type[_T]) -> type[_T]:
    """Give the frozen, slotted dataclass `cls` (fields with plain defaults or default
    factories, no `__post_init__`) an `__init__` that sets its fields with the instance's class
    switched for a moment to `unfrozen(cls)`, by plain assignments (an instance of a subclass
    by each field's slot descriptor). The dataclass's own calls `object.__setattr__` by name
    for each field, which costs about four times as much; the vocabulary's records are made
    several times per task run. Same parameters, defaults and frozen instances. Use it above
    `@dataclass` (or give `quick=True` to this module's `dataclass`). Raises TypeError for a
    field it cannot set so (keyword-only or not in `__init__`) and for a class with a
    `__post_init__`."""
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__: quick_init would skip it")
    # The values the generated code uses, handed to it as the parameters of a function that
    # makes the __init__ (they are then its closure's cells); the __init__ runs in the class's
    # module, whose globals resolve its annotations.
    values: dict[str, Any] = {"_FACTORY_DEFAULT": _FACTORY_DEFAULT}
    annotations: dict[str, Any] = {}
    parameters: list[str] = []
    assigned: list[str] = []  # the body with the class switched
    described: list[str] = []  # the body for a subclass's instance
    for number, item in enumerate(dataclasses.fields(cls)):  # type: ignore[arg-type]
        if not item.init or item.kw_only:
            raise TypeError(f"{cls.__name__}.{item.name}: quick_init takes plain fields only")
        setter = f"_set_{number}"
        values[setter] = cls.__dict__[item.name].__set__
        annotations[item.name] = item.type
        value = item.name
        if item.default_factory is not dataclasses.MISSING:
            values[f"_factory_{number}"] = item.default_factory
            parameters.append(f"{item.name}=_FACTORY_DEFAULT")
            value = f"_factory_{number}() if {item.name} is _FACTORY_DEFAULT else {item.name}"
        elif item.default is not dataclasses.MISSING:
            values[f"_default_{number}"] = item.default
            parameters.append(f"{item.name}=_default_{number}")
        else:
            parameters.append(item.name)
        assigned.append(f"            self.{item.name} = {value}")
        described.append(f"            {setter}(self, {value})")
    twin = unfrozen(cls)
    if twin is None or not assigned:
        body = [line[4:] for line in described] or ["        pass"]
        make = ["        return _cls(" + ", ".join(_names(parameters)) + ")"]
    else:
        values.update(_set_class=_set_class, _type=type, _twin=twin, _new=object.__new__)
        body = [
            "        if _type(self) is _cls:",
            '            _set_class(self, "__class__", _twin)',
            *assigned,
            "            self.__class__ = _cls",
            "        else:",
            *described,
        ]
        # `maker(cls)`: made as one of its own fields class, switched once, with no call of
        # the class (which costs as much again as the fields of a small record).
        make = [
            "        self = _new(_twin)",
            *(line[4:] for line in assigned),
            "        self.__class__ = _cls",
            "        return self",
        ]
    values["_cls"] = cls
    source = (
        f"def _make_init({', '.join(values)}):\n"
        f"    def __init__(self, {', '.join(parameters)}):\n"
        + "\n".join(body)
        + f"\n    def make({', '.join(parameters)}):\n"
        + "\n".join(make)
        + "\n    return __init__, make\n"
    )
    made: dict[str, Any] = {}
    exec(source, sys.modules[cls.__module__].__dict__, made)  # as dataclasses makes its own
    init, make_one = made["_make_init"](**values)
    init.__annotations__ = {**annotations, "return": None}
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = f"Make a {cls.__name__} (see the class for its fields)."
    setattr(cls, "__init__", init)  # noqa: B010 - mypy refuses assigning a method
    make_one.__qualname__ = make_one.__name__ = f"new_{cls.__name__}"
    make_one.__doc__ = f"A new {cls.__name__}, as {cls.__name__}(...) makes it, made quicker."
    _MAKERS[cls] = make_one
    return cls


def _names(parameters: list[str]) -> list[str]:
    """The names of `parameters` as written in a `def` (`name=default` or `name`)."""
    return [parameter.split("=", 1)[0] for parameter in parameters]


_MAKERS: dict[type, Callable[..., Any]] = {}


def maker(cls: type[_T]) -> Callable[..., _T]:
    """For a record `quick_init` made (`quick=True`): a function taking what `cls(...)` takes
    and returning what it returns, without calling the class (whose call costs about as much
    as assigning a small record's fields): for the few places that make one several times per
    task run. Raises KeyError for another class."""
    return _MAKERS[cls]


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
    quick: bool = False,
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
    quick: bool = False,
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
    quick: bool = False,
) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """`dataclasses.dataclass` with the same parameters and the same result (see the module's
    docstring for what it does otherwise): used bare (`@dataclass`) it takes the class and
    returns the dataclass; with parameters it returns the decorator. Raises what
    `dataclasses.dataclass` raises for the class.

    `quick=True` (a frozen, slotted class without dataclass bases, whose fields `quick_init`
    takes) compiles only the class's `__init__`, `quick_init`'s (none with `init=False`):
    `__setattr__` and `__delattr__` are closures too, and pickling is what dataclasses gives a
    frozen slotted class. Raises TypeError for a class it does not fit."""

    def wrap(cls: type[_T]) -> type[_T]:
        if order or unsafe_hash or sys.version_info >= (3, 13):
            made: type[_T] = dataclasses.dataclass(
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
            return quick_init(made) if quick and init else made
        return _process(
            cls,
            init=init,
            repr=repr,
            eq=eq,
            frozen=frozen,
            match_args=match_args,
            kw_only=kw_only,
            slots=slots,
            quick=quick,
        )

    if cls is None:
        return wrap
    return wrap(cls)
