"""Flow parameters validated and coerced from their annotations (pydantic v2), as the
reference does: `"42"` for an `int` becomes `42`, a dict for a pydantic model becomes the model.
A parameter without an annotation (or one that cannot be resolved), and a default left as it
is, are not looked at. pydantic is imported by the first annotated parameter, so a flow without
any costs nothing."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from stateward.exceptions import ParameterTypeError

if TYPE_CHECKING:
    import pydantic


def _adapter(annotation: Any) -> pydantic.TypeAdapter[Any] | None:
    import pydantic

    try:
        return pydantic.TypeAdapter(
            annotation, config=pydantic.ConfigDict(arbitrary_types_allowed=True)
        )
    except pydantic.PydanticUserError:  # a model or dataclass carries its own config
        try:
            return pydantic.TypeAdapter(annotation)
        except Exception:
            return None
    except Exception:  # a type pydantic cannot check: the value goes as given
        return None


def adapters_for(
    fn: Callable[..., Any], signature: inspect.Signature
) -> dict[str, pydantic.TypeAdapter[Any]]:
    """One validator per annotated parameter of `fn` (as `signature` lists them)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # a name the annotations use is not importable from the module
        hints = {}
    found: dict[str, pydantic.TypeAdapter[Any]] = {}
    for name, parameter in signature.parameters.items():
        annotation = hints.get(name, parameter.annotation)
        if annotation is inspect.Parameter.empty or isinstance(annotation, str):
            continue
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            annotation = tuple[annotation, ...]  # type: ignore[valid-type]
        elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
            annotation = dict[str, annotation]  # type: ignore[valid-type]
        adapter = _adapter(annotation)
        if adapter is not None:
            found[name] = adapter
    return found


def validated(
    what: str,
    signature: inspect.Signature,
    adapters: Mapping[str, pydantic.TypeAdapter[Any]],
    parameters: dict[str, Any],
) -> dict[str, Any]:
    """`parameters` coerced to their annotations. Raises ParameterTypeError naming every
    invalid one (`what` names the flow)."""
    coerced = dict(parameters)
    problems: list[str] = []
    for name, value in parameters.items():
        adapter = adapters.get(name)
        declared = signature.parameters.get(name)
        if adapter is None or (declared is not None and value is declared.default):
            continue
        import pydantic  # loaded already: the adapter is pydantic's

        try:
            coerced[name] = adapter.validate_python(value)
        except pydantic.ValidationError as error:
            reasons = "; ".join(problem["msg"] for problem in error.errors())
            problems.append(f"{name}={value!r}: {reasons}")
    if problems:
        raise ParameterTypeError(f"{what} got invalid parameters: " + ", ".join(problems))
    return coerced
