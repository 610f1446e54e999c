"""The JSON Schemas of pauses that wait for input, checked in time linear in the input.

A pause may carry a JSON Schema (draft 2020-12) that the input of its resume must match. Its
`pattern` and `patternProperties` keywords are regular expressions written by whoever paused the
run, matched against input written by whoever resumes it. Python's `re` backtracks: a pattern
such as `^(a+)+$` against 30 characters of input takes minutes while holding the GIL, which would
stop the whole server (health checks included). So these two keywords are matched here with
pydantic-core's regular expressions (Rust's `regex` crate), which run in time linear in the input
and cannot backtrack. The price is that look-around and back-references are not available; a
schema using them is refused when the pause is proposed, with a message saying so. (Pydantic v2
makes the same choice for its own `pattern` constraints, so schemas generated from pydantic
models, as the reference's `wait_for_input` does, work unchanged.)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # jsonschema and pydantic-core load when a pause first carries a schema
    from jsonschema.exceptions import ValidationError
    from jsonschema.protocols import Validator
    from pydantic_core import SchemaValidator

# How many compiled patterns are kept: each is a few kilobytes.
_CACHED_PATTERNS = 256


class UnsafePattern(ValueError):
    """A schema's regular expression that the linear-time engine cannot run (it uses
    look-around or back-references, or it is too large once compiled)."""


@lru_cache(maxsize=_CACHED_PATTERNS)
def _compiled(pattern: str) -> SchemaValidator:
    from pydantic_core import SchemaError, SchemaValidator, core_schema

    try:
        return SchemaValidator(core_schema.str_schema(pattern=pattern, regex_engine="rust-regex"))
    except SchemaError as error:
        # The engine's message ends with its reason ("look-around ... is not supported").
        reason = str(error).strip().splitlines()[-1].removeprefix("error: ")
        raise UnsafePattern(
            f"its pattern {pattern!r} cannot be used ({reason}); patterns must not use "
            "look-around or back-references, so that an input is checked in linear time"
        ) from None


def search(pattern: str, text: str) -> bool:
    """Whether `pattern` matches anywhere in `text` (JSON Schema's unanchored semantics), in time
    linear in `text`. Raises UnsafePattern for a pattern the engine cannot run."""
    return _compiled(pattern).isinstance_python(text)


def _pattern(
    validator: Validator, pattern: str, instance: object, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    from jsonschema.exceptions import ValidationError

    if isinstance(instance, str) and not search(pattern, instance):
        shown = instance if len(instance) <= 80 else instance[:77] + "..."
        yield ValidationError(f"{shown!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any,  # jsonschema's concrete validator class, which has `descend`
    patterns: Mapping[str, Any],
    instance: object,
    schema: Mapping[str, Any],
) -> Iterator[ValidationError]:
    if not isinstance(instance, dict):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any,  # jsonschema's concrete validator class, which has `descend`
    additional: Any,
    instance: object,
    schema: Mapping[str, Any],
) -> Iterator[ValidationError]:
    # `additionalProperties` looks at `patternProperties` itself: it must use the same engine.
    if not isinstance(instance, dict):
        return
    named = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    extras = [
        key
        for key in instance
        if key not in named and not any(search(pattern, key) for pattern in patterns)
    ]
    if isinstance(additional, dict):
        for key in extras:
            yield from validator.descend(instance[key], additional, path=key)
    elif additional is False and extras:
        from jsonschema.exceptions import ValidationError

        listed = ", ".join(repr(key) for key in sorted(extras)[:10])
        yield ValidationError(f"additional properties are not allowed ({listed} unexpected)")


@lru_cache(maxsize=1)
def _input_validator() -> Any:
    """Draft 2020-12's validator class with the three keywords above in place of jsonschema's
    (made once, when first needed)."""
    from jsonschema import Draft202012Validator, validators

    # The stubs leave `extend` untyped; it returns a validator class like Draft202012Validator.
    return validators.extend(  # type: ignore[no-untyped-call]
        Draft202012Validator,
        {
            "pattern": _pattern,
            "patternProperties": _pattern_properties,
            "additionalProperties": _additional_properties,
        },
    )


def members_in(node: object) -> Iterator[tuple[str, Any]]:
    """Every member (key, value) of every JSON object of a JSON document, at any depth, in
    document order: a member comes before those nested in its value."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from members_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from members_in(item)


def patterns_in(node: object) -> Iterator[str]:
    """Every regular expression of a JSON Schema: the values of `pattern` and the keys of
    `patternProperties`, at any depth."""
    for key, value in members_in(node):
        if key == "pattern" and isinstance(value, str):
            yield value
        elif key == "patternProperties" and isinstance(value, dict):
            yield from (pattern for pattern in value if isinstance(pattern, str))


def _uses(node: object, keyword: str) -> bool:
    return any(key == keyword for key, _ in members_in(node))


def check_patterns(schema: object) -> None:
    """Raise UnsafePattern for the first regular expression of `schema` that the linear-time
    engine cannot run; return None when all can. A schema combining `unevaluatedProperties`
    with `patternProperties` is refused too: jsonschema matches those with Python's `re`."""
    for pattern in patterns_in(schema):
        _compiled(pattern)
    if _uses(schema, "unevaluatedProperties") and _uses(schema, "patternProperties"):
        raise UnsafePattern(
            "it combines unevaluatedProperties with patternProperties, which cannot be checked "
            "in linear time; use additionalProperties instead of unevaluatedProperties"
        )


def validator_for(schema: Mapping[str, Any]) -> Validator:
    """A draft 2020-12 validator of `schema` whose patterns run in linear time. Its errors are
    those of jsonschema (use `jsonschema.exceptions.best_match`); a pattern the engine cannot run
    raises UnsafePattern while validating."""
    validator: Validator = _input_validator()(schema)
    return validator
