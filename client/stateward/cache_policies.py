"""Cache policies: recipes for a task run's cache key, at the reference's path.

A task with a cache policy computes its key in the SDK before it starts; the server keeps the
cached states (a run proposing Running with a key that has an unexpired Completed state gets a
Cached copy of it instead, in any process). Policies compose with `+` (the key changes when any
part's key changes) and `INPUTS - "name"` leaves an argument out.

- `INPUTS`: the task's arguments (`Inputs(exclude=[...])` leaves some out).
- `TASK_SOURCE`: the source code of the task's function.
- `FLOW_PARAMETERS`: the parameters of the flow run the task runs in.
- `RUN_ID`: the flow run's id (a task run outside a flow: its own id).
- `NO_CACHE` (also `NONE`): no key, never cached.
- `DEFAULT`: `INPUTS + TASK_SOURCE + RUN_ID`: identical calls in one flow run are cached.
- `CacheKeyFnPolicy(fn)`: the key `fn(context, arguments)` returns (what `cache_key_fn` makes).

A policy computing a key raises ValueError when a value cannot be hashed; the task then runs
uncached and the SDK logs why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import pickle
from collections.abc import Callable, Iterable
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from stateward._records import dataclass

if TYPE_CHECKING:
    from stateward._context import TaskRunContext


def hash_objects(*objects: Any) -> str:
    """A hex digest of the objects: of their JSON text (keys sorted) when JSON can hold them,
    else of their pickle. Raises ValueError when neither can."""
    try:
        payload = json.dumps(objects, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError):
        try:
            payload = pickle.dumps(objects, protocol=4)
        except Exception as error:
            kinds = ", ".join(sorted({type(o).__name__ for o in objects}))
            raise ValueError(
                f"cannot hash {kinds} for a cache key ({error}); leave the value out "
                "(INPUTS - 'name') or give the task a cache_key_fn"
            ) from None
    return hashlib.sha256(payload).hexdigest()


@dataclass(frozen=True)
class CachePolicy:
    """The base of every policy: `compute_key` gives the key (None: do not cache)."""

    key_storage: str | None = field(default=None, kw_only=True)

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        """The cache key of a task run about to start, from its context, its arguments and its
        flow run's parameters; None means the run is not cached."""
        raise NotImplementedError

    def configure(
        self,
        key_storage: str | Path | None = None,
        lock_manager: Any = None,
        isolation_level: Any = None,
    ) -> Self:
        """A copy of the policy whose cache records are kept apart under `key_storage` (a
        name or path): policies configured with different storages never share entries, the
        same storage shares them across flows, tasks and processes. Every record lives on the
        Stateward server. Raises ValueError for `lock_manager` or `isolation_level`: the
        server decides each run's states one at a time, and Stateward has no transactions for
        them to govern."""
        if lock_manager is not None or isolation_level is not None:
            raise ValueError(
                "Stateward has no transactions: the server decides each run's states one at a "
                "time, so a cache policy takes no lock_manager or isolation_level"
            )
        if key_storage is None:
            return self
        if not isinstance(key_storage, str | Path):
            raise TypeError(
                "key_storage is a name or a path (the cache records live on the Stateward "
                f"server), not {type(key_storage).__name__}"
            )
        return dataclasses.replace(self, key_storage=str(key_storage))

    def key_for(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any]
    ) -> str | None:
        """`compute_key`, set apart by the policy's key storage when it has one."""
        key = self.compute_key(task_ctx, inputs, flow_parameters)
        if key is None or self.key_storage is None:
            return key
        return f"{hash_objects(self.key_storage)[:16]}-{key}"

    def __add__(self, other: CachePolicy) -> CachePolicy:
        if not isinstance(other, CachePolicy):
            return NotImplemented
        if isinstance(other, NoCache):
            return self
        if isinstance(self, NoCache):
            return other
        mine = self.policies if isinstance(self, CompoundCachePolicy) else (self,)
        theirs = other.policies if isinstance(other, CompoundCachePolicy) else (other,)
        return CompoundCachePolicy(
            policies=(*mine, *(p for p in theirs if p not in mine)), key_storage=self.key_storage
        )

    def __sub__(self, name: str) -> CachePolicy:
        """The policy without the argument `name` in its inputs (a policy without inputs gains
        none)."""
        if not isinstance(name, str):
            raise TypeError("only an argument's name can be taken out of a cache policy")
        return self

    @classmethod
    def from_cache_key_fn(
        cls, cache_key_fn: Callable[[TaskRunContext, dict[str, Any]], str | None]
    ) -> CacheKeyFnPolicy:
        """The policy of a `cache_key_fn`."""
        return CacheKeyFnPolicy(cache_key_fn=cache_key_fn)


@dataclass(frozen=True)
class CacheKeyFnPolicy(CachePolicy):
    """The key is what `cache_key_fn(context, arguments)` returns (None: not cached)."""

    cache_key_fn: Callable[[TaskRunContext, dict[str, Any]], str | None] | None = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        if self.cache_key_fn is None:
            return None
        return self.cache_key_fn(task_ctx, inputs)


@dataclass(frozen=True)
class CompoundCachePolicy(CachePolicy):
    """Several policies: the key changes when any of theirs does; None when all are None."""

    policies: tuple[CachePolicy, ...] = ()

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        keys = [p.key_for(task_ctx, inputs, flow_parameters) for p in self.policies]
        if all(key is None for key in keys):
            return None
        return hash_objects(*keys)

    def __sub__(self, name: str) -> CachePolicy:
        if not isinstance(name, str):
            raise TypeError("only an argument's name can be taken out of a cache policy")
        return dataclasses.replace(self, policies=tuple(p - name for p in self.policies))


@dataclass(frozen=True)
class NoCache(CachePolicy):
    """Never a key: the task always runs (`NO_CACHE`, also named `NONE`)."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        return None


@dataclass(frozen=True)
class TaskSource(CachePolicy):
    """The source code of the task's function (its compiled code when the source is not
    available)."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        fn = task_ctx.task.fn
        try:
            source = inspect.getsource(fn)
        except (OSError, TypeError):
            code = getattr(fn, "__code__", None)
            if code is None:
                raise ValueError(
                    f"the source of task {task_ctx.task.name!r} cannot be read for its cache key"
                ) from None
            return hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()
        return hash_objects(source)


@dataclass(frozen=True)
class FlowParameters(CachePolicy):
    """The parameters of the flow run the task runs in (None outside a flow run)."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        if not flow_parameters:
            return None
        return hash_objects(flow_parameters)


@dataclass(frozen=True)
class RunId(CachePolicy):
    """The id of the flow run the task runs in; a task run outside a flow run, its own id."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        return task_ctx.task_run.flow_run_id or task_ctx.task_run.id


@dataclass(frozen=True)
class Inputs(CachePolicy):
    """The task's arguments, but those named in `exclude`."""

    exclude: tuple[str, ...] = ()

    def __init__(self, exclude: Iterable[str] = (), *, key_storage: str | None = None) -> None:
        if isinstance(exclude, str):
            exclude = (exclude,)
        object.__setattr__(self, "exclude", tuple(exclude))
        object.__setattr__(self, "key_storage", key_storage)

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        kept = {key: value for key, value in inputs.items() if key not in self.exclude}
        return hash_objects(kept)

    def __sub__(self, name: str) -> CachePolicy:
        if not isinstance(name, str):
            raise TypeError("only an argument's name can be taken out of a cache policy")
        return Inputs(exclude=(*self.exclude, name), key_storage=self.key_storage)


INPUTS = Inputs()
TASK_SOURCE = TaskSource()
FLOW_PARAMETERS = FlowParameters()
RUN_ID = RunId()
NO_CACHE = NoCache()
NONE = NO_CACHE
DEFAULT = INPUTS + TASK_SOURCE + RUN_ID

__all__ = [
    "DEFAULT",
    "FLOW_PARAMETERS",
    "INPUTS",
    "NONE",
    "NO_CACHE",
    "RUN_ID",
    "TASK_SOURCE",
    "CacheKeyFnPolicy",
    "CachePolicy",
    "CompoundCachePolicy",
    "FlowParameters",
    "Inputs",
    "NoCache",
    "RunId",
    "TaskSource",
    "hash_objects",
]
