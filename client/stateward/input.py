"""Typed input for a paused flow run, at the reference's path (`prefect.input`): subclass
`RunInput` to say what `pause_flow_run(wait_for_input=...)` waits for, and
`with_initial_data(...)` to give its fields defaults and the person resuming a description.

The reference's sending of inputs between running flow runs (`RunInput.send_to`, `.receive`,
`.respond`, `send_input`, `receive_input`) is not here (see README, "Differences from the
reference")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Self

import pydantic

__all__ = ["RunInput"]


class RunInput(pydantic.BaseModel):
    """The input a paused flow run waits for: a pydantic model that refuses unknown fields, as
    the reference's RunInput does. `pause_flow_run(wait_for_input=MyInput)` returns a
    `MyInput`; the resume's input (a dict of its fields, or a `MyInput`) is checked against the
    model's JSON Schema by the server. The class's docstring, or `with_initial_data`'s
    description, is the schema's description: the run's logs show it with the pause."""

    model_config: ClassVar[pydantic.ConfigDict] = pydantic.ConfigDict(extra="forbid")

    @classmethod
    def with_initial_data(cls, description: str | None = None, **initial: Any) -> type[Self]:
        """A subclass of this class whose fields named in `initial` default to the values
        given (a name that is no field becomes one, of the value's type), so that a resume may
        leave them out; `description` (when given) says what the input is for. Mirrors the
        reference's `RunInput.with_initial_data`. A value is checked against its field's type
        at once (and kept as that type makes it: "3" for an int field is 3); raises
        ValueError, naming the field and why, for one that does not fit."""
        fields: dict[str, Any] = {}
        for name, value in initial.items():
            field = cls.model_fields.get(name)
            if field is None:
                fields[name] = (type(value), value)
                continue
            # A default is not validated by pydantic: one that does not fit would be offered
            # in the schema and held by every instance. (The field's constraints too.)
            typed: Any = field.annotation
            if field.metadata:
                typed = Annotated[(typed, *field.metadata)]
            try:
                checked = pydantic.TypeAdapter(typed).validate_python(value)
            except pydantic.ValidationError as error:
                raise ValueError(
                    f"{cls.__name__}.with_initial_data: {name}={value!r} does not fit the field "
                    f"{name}: {error.errors()[0]['msg']}"
                ) from None
            fields[name] = (field.annotation, checked)
        made: type[Self] = pydantic.create_model(
            cls.__name__,
            __base__=cls,
            __doc__=description if description is not None else cls.__doc__,
            __module__=cls.__module__,
            **fields,
        )
        return made


if not TYPE_CHECKING:  # (for type checkers, a misspelt name stays an error)

    def __getattr__(name: str) -> Any:
        """Only for a name not found: one the reference's module has and this one leaves out
        raises ImportError saying what to do instead (see `stateward._left_out`)."""
        from stateward._left_out import missing_name

        missing_name(__name__, name)
