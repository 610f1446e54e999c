"""`stateward._records.dataclass` (the SDK's and the server's record maker) makes the class
`dataclasses.dataclass` makes: each sample below is made by both, and everything a user can see of
an instance (repr, equality, hash, immutability, pickling, `fields`, `replace`, the parameters,
subclassing) is held against the standard library's."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
from dataclasses import field
from typing import Any

import pytest

from stateward import cache_policies
from stateward._records import dataclass as quick_dataclass
from stateward.runs import TaskRun
from stateward.states import StateDetails


def twins(**options: Any) -> tuple[type, type]:
    """The same class body made by the standard library and by the record maker."""

    def body() -> type:
        class Point:
            """A point."""

            x: int
            y: float = 0.0
            label: str = field(default="", compare=False)
            secret: str = field(default="", repr=False)
            tags: list[str] = field(default_factory=list, hash=False)

        return Point

    standard = {name: value for name, value in options.items() if name != "quick"}
    return dataclasses.dataclass(**standard)(body()), quick_dataclass(**options)(body())


OPTIONS = [
    {},
    {"frozen": True},
    {"frozen": True, "slots": True},
    {"frozen": True, "slots": True, "quick": True},
    {"slots": True},
    {"repr": False},
    {"eq": False},
    {"eq": False, "frozen": True},
    {"kw_only": True, "frozen": True},
    {"order": True},
    {"unsafe_hash": True},
]


def build(cls: type, x: int, *more: Any, **keywords: Any) -> Any:
    """An instance of one of the twins (x by name when the fields are keyword-only)."""
    if more:
        keywords["y"] = more[0]
    return cls(x=x, **keywords)


def seen(value: Any) -> str:
    """The repr with the class's own name left out (the twins are different classes); without a
    dataclass repr, the name of the class that gives it."""
    if not type(value).__dataclass_params__.repr:
        return type(value).__repr__.__qualname__
    return repr(value).replace(type(value).__qualname__, "C")


@pytest.mark.parametrize("options", OPTIONS, ids=lambda options: repr(options))
def test_a_record_behaves_as_the_standard_librarys_dataclass(options: dict[str, Any]) -> None:
    standard, quick = twins(**options)
    assert repr(standard.__dataclass_params__) == repr(quick.__dataclass_params__)  # type: ignore[attr-defined]
    assert [(f.name, f.repr, f.compare, f.hash) for f in dataclasses.fields(standard)] == [
        (f.name, f.repr, f.compare, f.hash) for f in dataclasses.fields(quick)
    ]
    assert standard.__match_args__ == quick.__match_args__  # type: ignore[attr-defined]
    assert ("__slots__" in vars(standard)) == ("__slots__" in vars(quick))
    assert (standard.__hash__ is None) == (quick.__hash__ is None)
    for name in ("__repr__", "__eq__", "__hash__"):
        assert (name in vars(standard)) == (name in vars(quick)), name
        if name in vars(quick) and vars(quick)[name] is not None:
            assert vars(quick)[name].__qualname__ == f"{quick.__qualname__}.{name}"

    pairs = [
        (
            build(cls, 1, 2.5, label="a", secret="s", tags=["t"]),
            build(cls, 1, 2.5, label="b", secret="s"),
        )
        for cls in (standard, quick)
    ]
    (std_one, std_two), (quick_one, quick_two) = pairs
    assert seen(std_one) == seen(quick_one)
    assert (std_one == std_two) == (quick_one == quick_two)
    assert (std_one == copy.copy(std_one)) == (quick_one == copy.copy(quick_one))
    assert (std_one == build(standard, 2)) == (quick_one == build(quick, 2))
    assert std_one.__eq__(object()) is quick_one.__eq__(object())  # NotImplemented, or not
    if standard.__hash__ is not None and standard.__hash__ is not object.__hash__:
        assert (
            hash(quick_one) == hash(quick_two) == hash(build(quick, 1, 2.5, secret="s", tags=["u"]))
        )
        assert hash(quick_one) == hash(std_one)  # the same tuple of values
    frozen = options.get("frozen", False)
    for target in (std_one, quick_one):
        if frozen:
            with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'x'"):
                target.x = 5
            with pytest.raises(dataclasses.FrozenInstanceError, match="cannot delete field 'y'"):
                del target.y
        else:
            target.x = 5
    assert seen(std_one) == seen(quick_one)
    assert seen(dataclasses.replace(std_one, y=9.0)) == seen(dataclasses.replace(quick_one, y=9.0))
    assert str(inspect.signature(standard)) == str(inspect.signature(quick))
    if frozen and options.get("slots"):  # pickle's state: dataclasses' list of the values
        assert quick_one.__getstate__() == std_one.__getstate__()


@pytest.mark.parametrize("record", [StateDetails, TaskRun, cache_policies.Inputs])
def test_a_record_from_the_vocabulary_pickles_and_copies_as_built(record: type) -> None:
    made = record() if record is not TaskRun else record("t", "load-0", "load", tags=("a",))
    assert pickle.loads(pickle.dumps(made)) == made
    assert copy.deepcopy(made) == made
    if record is not TaskRun:  # its parameters are a dict
        assert hash(pickle.loads(pickle.dumps(made))) == hash(made)
    assert dataclasses.is_dataclass(made)
    assert record.__dataclass_params__.repr and record.__dataclass_params__.eq  # type: ignore[attr-defined]


def test_a_record_shows_three_dots_for_itself_inside_itself() -> None:
    @quick_dataclass
    class Node:
        children: list[Any]

    @dataclasses.dataclass
    class StandardNode:
        children: list[Any]

    node, standard = Node([]), StandardNode([])
    node.children.append(node)
    standard.children.append(standard)
    assert repr(node) == repr(standard).replace("StandardNode", "Node")
    assert repr(node).endswith(".Node(children=[...])")


def test_a_record_keeps_the_methods_its_body_writes() -> None:
    @quick_dataclass(frozen=True)
    class Own:
        value: int

        def __repr__(self) -> str:
            return "own"

        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return 7

    assert repr(Own(1)) == "own" and Own(1) == Own(2) and hash(Own(3)) == 7

    @quick_dataclass(frozen=True)
    class EqOnly:
        value: int

        def __eq__(self, other: object) -> bool:
            return True

    # As the standard library does: Python's implicit __hash__ = None does not count as written.
    assert hash(EqOnly(1)) == hash((1,))


def test_a_standard_dataclass_subclasses_a_frozen_record_and_a_record_subclasses_one() -> None:
    @dataclasses.dataclass(frozen=True)
    class Mine(cache_policies.CachePolicy):
        size: int = 0

    assert repr(Mine(size=2)).endswith("Mine(key_storage=None, size=2)")
    assert Mine(size=2) == Mine(size=2) and hash(Mine(size=2)) == hash(Mine(size=2))
    with pytest.raises(TypeError, match="non-frozen"):

        @dataclasses.dataclass
        class Thawed(cache_policies.CachePolicy):
            size: int = 0

    @quick_dataclass(frozen=True)
    class Later(cache_policies.RunId):  # a record subclassing a record
        extra: int = 0

    assert repr(Later(extra=1)).endswith("Later(key_storage=None, extra=1)")
    assert Later(extra=1) == Later(extra=1) != Later(extra=2)
    assert Later(extra=1) != cache_policies.RunId()  # another class: not equal


def test_a_quick_record_refuses_a_class_it_would_make_wrongly() -> None:
    with pytest.raises(TypeError, match="frozen and slotted"):

        @quick_dataclass(frozen=True, quick=True)
        class Unslotted:
            value: int

    with pytest.raises(TypeError, match="no dataclass base"):

        @quick_dataclass(frozen=True, slots=True, quick=True)
        class Derived(cache_policies.RunId):
            value: int = 0

    with pytest.raises(TypeError, match="Cannot overwrite attribute __setattr__"):

        @quick_dataclass(frozen=True, slots=True, quick=True)
        class Own:
            value: int

            def __setattr__(self, name: str, value: Any) -> None:
                pass

    with pytest.raises(TypeError, match="plain fields"):

        @quick_dataclass(frozen=True, slots=True, quick=True)
        class Named:
            value: int = field(default=0, kw_only=True)


def test_a_quick_record_without_a_docstring_is_documented_by_its_signature() -> None:
    @quick_dataclass(frozen=True, slots=True, quick=True)
    class Bare:
        value: int
        other: str = ""

    @dataclasses.dataclass(frozen=True, slots=True)
    class StandardBare:
        value: int
        other: str = ""

    assert Bare.__doc__ == (StandardBare.__doc__ or "").replace("StandardBare", "Bare")
    assert Bare.__doc__ == "Bare(value: 'int', other: 'str' = '')"
