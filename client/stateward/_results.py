"""Results: a run's return value (or exception) encoded for storage on its state.

JSON when the value survives a round trip through it unchanged, so other languages can read it;
otherwise a Python pickle. Encoded results have a size limit (STATEWARD_MAX_RESULT_BYTES),
checked before anything is sent. A run may keep its result in memory only (`persist_result=False`:
nothing goes to the server), or write one over the limit to a file in its result storage (a
folder: `result_storage=`, else STATEWARD_RESULTS_STORAGE_PATH); the state then carries a JSON
reference to the file, `{"stateward.result_file": {"path": ..., "serializer": ..., "bytes": ...}}`,
which any process on the machine reads back. Without storage, a result over the limit fails its
run only when the run asked for its result to persist; otherwise it is kept in memory only, as
the reference (Prefect 3) keeps results it does not persist.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stateward import settings
from stateward._context import for_this_run
from stateward._records import dataclass
from stateward.exceptions import (
    CancelledRun,
    CrashedRun,
    FailedRun,
    MissingResult,
    PausedRun,
    ResultTooLarge,
    RunError,
)
from stateward.filesystems import LocalFileSystem
from stateward.states import ResultData, State, StateType, has_value

# The one key of the JSON object a state carries for a result written to a file.
RESULT_FILE_KEY = "stateward.result_file"

# What a state's proposal needs besides its result (ids, message, details...), at most: a result
# is stored inline only if it is this much smaller than the server's largest message.
SERVER_MESSAGE_ROOM = 64 * 1024


def _is_plain_json(value: Any) -> bool:
    """Whether json.loads(json.dumps(value)) == value with the same types all the way down."""
    if value is None or isinstance(value, bool | str):
        return True
    if isinstance(value, int):
        return type(value) is int
    if isinstance(value, float):
        return type(value) is float and math.isfinite(value)
    if type(value) is list:
        return all(_is_plain_json(item) for item in value)
    if type(value) is dict:
        return all(type(k) is str and _is_plain_json(v) for k, v in value.items())
    return False


@dataclass(frozen=True, slots=True, quick=True)
class ResultPolicy:
    """How a run keeps its result: `persist` false keeps it in the run's process only (nothing
    is sent); `storage` is the folder for a result over the size limit; `required` whether the
    run asked for its result to persist (`persist_result=True`, a cache policy or key function,
    STATEWARD_RESULTS_PERSIST_BY_DEFAULT=true): then a result over the limit without storage
    fails the run (ResultTooLarge), else it is kept in memory only."""

    persist: bool = True
    storage: Path | None = None
    required: bool = True


_PERSIST = ResultPolicy()  # the default: persist, required, no storage folder


def storage_folder(value: Any, option: str = "result_storage") -> Path | None:
    """The folder a `result_storage` option names: a path (str or os.PathLike; `~` expanded,
    a relative one taken from the current folder now) or a `LocalFileSystem`; None for None.
    Raises TypeError for anything else, ValueError for a URL (only local folders are known)."""
    if value is None:
        return None
    if isinstance(value, LocalFileSystem):
        return value.path
    if isinstance(value, str | os.PathLike) and not isinstance(value, bytes):
        text = os.fspath(value)
        if "://" in text:
            raise ValueError(
                f"{option}={text!r} is a URL: Stateward stores results in a local folder; give "
                "its path (or LocalFileSystem(basepath=...))"
            )
        if not text.strip():
            raise ValueError(f"{option} is empty: give a folder's path")
        return Path(text).expanduser().absolute()
    raise TypeError(
        f"{option} takes a folder's path (str or pathlib.Path) or "
        f"stateward.filesystems.LocalFileSystem(basepath=...), not {value!r}"
    )


def policy(persist_result: bool | None, *folders: Path | None) -> ResultPolicy:
    """The policy of a run: persisted unless `persist_result` is False, required when it is
    True (a task given a cache policy or key function has it True) or, unset, with
    STATEWARD_RESULTS_PERSIST_BY_DEFAULT=true; its storage the first folder given (the run's
    own, then the flow run's around it...), else STATEWARD_RESULTS_STORAGE_PATH."""
    storage = None
    for folder in folders:  # a loop, not next() over a generator: every run comes here
        if folder is not None:
            storage = folder
            break
    if storage is None:
        storage = for_this_run(settings.results_storage_path)
    required = persist_result is True or (
        persist_result is None and for_this_run(settings.results_persist_by_default)
    )
    return ResultPolicy(persist=persist_result is not False, storage=storage, required=required)


# `json.dumps(..., separators=(",", ":"), ensure_ascii=False)` without building an encoder at
# each call (every result passes here).
_compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


# What `_compact_json` writes for an exact str, int, bool or None (C functions, no encoder):
# most results are one of those.
_SCALAR_JSON: dict[type, Callable[[Any], str]] = {
    str: json.encoder.encode_basestring,
    int: int.__repr__,
    bool: {True: "true", False: "false"}.__getitem__,
    type(None): {None: "null"}.__getitem__,
}


def _serialized(value: Any) -> tuple[bytes, str]:
    """The value encoded, and how: as JSON when it round-trips (a plain object that looks like
    a result file reference is pickled instead), else as a pickle."""
    scalar = _SCALAR_JSON.get(value.__class__)
    if scalar is not None:
        return scalar(value).encode(), "json"
    if _is_plain_json(value) and not _is_reference(value):
        return _compact_json(value).encode(), "json"
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), "pickle"


def encode(
    value: Any,
    what: str = "result",
    policy: ResultPolicy = _PERSIST,
    server_limit: int | None = None,
) -> ResultData | None:
    """Encode a value for its state: None when the policy keeps it in memory only; the value
    itself up to the size limit (STATEWARD_MAX_RESULT_BYTES, or `server_limit` bytes, the
    largest message the server takes, when lower); above it, a reference to the file written
    in the policy's storage. Raises ResultTooLarge (over the limit, no storage: its message
    says whether the run required persistence, see `ResultPolicy`), OSError (the file could not
    be written) or the pickling error."""
    if not policy.persist:
        return None
    blob, serializer = _serialized(value)
    size = len(blob)
    limit = for_this_run(settings.max_result_bytes)
    if server_limit is not None:
        limit = min(limit, server_limit - SERVER_MESSAGE_ROOM)
    if size <= limit:
        if serializer == "json":
            return ResultData(json=blob.decode())
        return ResultData(pickle=blob)
    if policy.storage is None:
        over = f"the {what} is {size:,} bytes once encoded, over the limit of {limit:,} bytes "
        raise_it = "raise the limit with STATEWARD_MAX_RESULT_BYTES"
        if server_limit is not None:
            raise_it = (
                f"raise the server's limit (it takes messages of {server_limit:,} bytes at "
                "most) with `stateward server start --max-message-bytes` or "
                "STATEWARD_MAX_MESSAGE_BYTES"
            )
        if not policy.required:
            raise ResultTooLarge(
                f"{over}for results stored on the server: it is kept in this process only; "
                "to store it, give the run result_storage='/a/folder' (or set "
                f"STATEWARD_RESULTS_STORAGE_PATH), or {raise_it}"
            )
        raise ResultTooLarge(
            f"{over}for results stored on the server: keep it in this process only with "
            "persist_result=False, write it to a file with result_storage='/a/folder' (or "
            "STATEWARD_RESULTS_STORAGE_PATH for every run), return something smaller (a path "
            f"or a key to the data, say), or {raise_it}"
        )
    path = write_result_file(policy.storage, blob, serializer)
    reference = {RESULT_FILE_KEY: {"path": str(path), "serializer": serializer, "bytes": size}}
    return ResultData(json=json.dumps(reference, separators=(",", ":"), ensure_ascii=False))


def write_result_file(folder: Path, blob: bytes, serializer: str) -> Path:
    """Write `blob` to a new file in `folder` (created if missing) and return its path. The
    file appears whole or not at all (written under a temporary name, flushed to disk, then
    renamed). Raises OSError naming the folder."""
    import tempfile  # a cold start need not pay for it (nor uuid): few results go to files
    import uuid

    path = folder / f"{uuid.uuid4().hex}.{serializer}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(
            dir=folder, prefix=f".{path.name}.", suffix=".partial"
        )
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(blob)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        why = error.strerror or str(error)
        raise OSError(
            error.errno, f"cannot write the result to the folder {str(folder)!r}: {why}"
        ) from error
    return path


def _is_reference(value: Any) -> bool:
    return type(value) is dict and len(value) == 1 and isinstance(value.get(RESULT_FILE_KEY), dict)


# The name of a result file `write_result_file` writes: 32 hex digits, then its serializer.
_RESULT_FILE_NAME = re.compile(r"[0-9a-f]{32}\.(json|pickle)")


def read_result_file(reference: dict[str, Any]) -> Any:
    """The value in the result file a reference names. Raises MissingResult when the file is
    gone, unreadable or damaged (its size not the one recorded, its content not decodable), or
    when the reference does not name a file `write_result_file` writes (an absolute path to a
    regular file named by 32 hex digits and its serializer): a reference is read from the
    server, so one written by anything else never makes this process read any other file."""
    path = str(reference.get("path", ""))
    serializer = reference.get("serializer")
    size = reference.get("bytes")
    name = _RESULT_FILE_NAME.fullmatch(os.path.basename(path))
    if not os.path.isabs(path) or name is None or name.group(1) != serializer:
        raise MissingResult(
            f"the result reference names {path!r} with serializer {serializer!r}, which is not "
            "a result file Stateward writes (an absolute path to <32 hex digits>.json or "
            ".pickle, its serializer the same): it is not read"
        )
    try:
        # Not blocking on a FIFO's open; a regular file reads as always.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(descriptor, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise MissingResult(f"the result file {path!r} is not a regular file")
            blob = file.read()
    except FileNotFoundError:
        raise MissingResult(
            f"the result was written to {path!r}, which does not exist (deleted since, or "
            "written on another machine: result storage is a folder of the machine that ran "
            "the run)"
        ) from None
    except OSError as error:
        raise MissingResult(f"the result file {path!r} cannot be read: {error}") from None
    if isinstance(size, int) and len(blob) != size:
        raise MissingResult(
            f"the result file {path!r} holds {len(blob):,} bytes, not the {size:,} written: "
            "it was changed or truncated since"
        )
    try:
        if serializer == "json":
            return json.loads(blob)
        return pickle.loads(blob)
    except Exception as error:
        raise MissingResult(f"the result file {path!r} cannot be decoded: {error}") from None


# An exception is stored up to the result size limit, or this much if the limit is lower: a
# failure says why even under a small limit.
EXCEPTION_BYTES_FLOOR = 64 * 1024


def encode_exception(error: BaseException) -> ResultData | None:
    """Encode an exception for a failed state; None when it cannot be pickled or is too large.
    When the exception pickles only without its cause and context (see `_unchained`), it is
    stored without them; `error` itself keeps them."""
    for candidate in (error, _unchained(error)):
        if candidate is None:
            continue
        try:
            blob = pickle.dumps(candidate, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(blob)
        except Exception:
            continue
        if len(blob) > max(for_this_run(settings.max_result_bytes), EXCEPTION_BYTES_FLOOR):
            return None
        return ResultData(pickle=blob)
    return None


def _unchained(error: BaseException) -> BaseException | None:
    """A copy of `error` without its cause, context and traceback (None if it cannot be
    copied). Pickle keeps none of them, unless a library makes exceptions keep their chain
    (tblib's pickling support, which importing `distributed` installs): then one link that
    cannot be pickled (a gRPC error holding its call's locks, say) lost the whole exception."""
    try:
        copied = copy.copy(error)
    except Exception:
        return None
    copied.__cause__ = copied.__context__ = None
    copied.__traceback__ = None
    return copied


def decode(data: ResultData) -> Any:
    """The value an encoded result holds (read from its file, for a result file reference).
    Raises MissingResult when that file is gone."""
    if data.json is not None:
        value = json.loads(data.json)
        if _is_reference(value):
            return read_result_file(value[RESULT_FILE_KEY])
        return value
    if data.pickle is not None:
        return pickle.loads(data.pickle)
    return None


_RUN_ERRORS: dict[StateType, type[RunError]] = {
    StateType.FAILED: FailedRun,
    StateType.CRASHED: CrashedRun,
    StateType.CANCELLED: CancelledRun,
    StateType.PAUSED: PausedRun,
}

_BAD_TYPES = (StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


def held_value(state: State) -> Any:
    """The value a state carries (in this process, or decoded); None when it cannot be read."""
    if has_value(state):
        return state._value
    if state.data is None:
        return None
    try:
        return decode(state.data)
    except Exception:
        return None


def exception_for(state: State) -> BaseException:
    """The exception a failed, crashed, cancelled or paused state stands for: the one it carries;
    for a state judged from other states (a flow that returned them), that of the first failed,
    crashed or cancelled one among them; else a RunError naming the state."""
    value = held_value(state)
    if isinstance(value, BaseException):
        return value
    if isinstance(value, State) and value.type in _BAD_TYPES:
        return exception_for(value)
    if isinstance(value, list | tuple | set):
        for item in value:
            if isinstance(item, State) and item.type in _BAD_TYPES:
                return exception_for(item)
    error_type = _RUN_ERRORS.get(state.type, FailedRun)
    return error_type(state.message or f"the run ended in state {state.name}")
