"""Typed input for a paused flow run, at the reference's path (`prefect.input`): subclass
`RunInput` to say what `pause_flow_run(wait_for_input=...)` waits for, and
`with_initial_data(...)` to give its fields defaults and the person resuming a description.

The reference's sending of inputs between running flow runs (`RunInput.send_to`, `.receive`,
`.respond`, `send_input`, `receive_input`) is not here (see README, "Differences from the
reference")."""

from __future__ import annotations

from typing import Any, ClassVar, Self

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
        reference's `RunInput.with_initial_data`. Raises pydantic's errors for a value that
        does not fit its field's type when the model is validated."""
        fields: dict[str, Any] = {}
        for name, value in initial.items():
            field = cls.model_fields.get(name)
            fields[name] = (field.annotation if field is not None else type(value), value)
        made: type[Self] = pydantic.create_model(
            cls.__name__,
            __base__=cls,
            __doc__=description if description is not None else cls.__doc__,
            __module__=cls.__module__,
            **fields,
        )
        return made
