"""The arrows of DESIGN.md ("The house"), checked on the source: every import statement of every
module of `stateward` (generated code aside) and `stateward_service`, those inside functions and
`if TYPE_CHECKING:` blocks included, is read with `ast` and held against the table below.

| modules                    | may import                                                    |
|----------------------------|---------------------------------------------------------------|
| stateward_service.rules    | the pure standard library (no I/O, threads or asyncio), the   |
|                            | vocabulary (stateward.states, .runs), stateward_service.model |
|                            | and itself: no store, no API, no grpc, no protobuf            |
| stateward_service.store    | anything but grpc, protobuf, stateward.v1 and the gRPC layers |
|                            | (grpc_api, validation, interceptors, server assembly)         |
| the domain: rules, store,  | no grpc, no protobuf, no stateward.v1, no gRPC layer          |
| model, orchestrator,       |                                                               |
| broadcaster, loops, names, |                                                               |
| settings                   |                                                               |
| stateward_service.* but    | of the store only the values and errors of the orchestrator's |
| orchestrator and replica   | signatures and errors (RunFilter, BadPageToken, ...): the     |
|                            | orchestrator is the only door to it                           |
| stateward_service.*        | of the SDK, only stateward.states, .runs, .wire, .exceptions, |
|                            | .ids, .settings, .times and the generated stateward.v1: no    |
|                            | stateward._*, no engine, no client                            |
| stateward.* (the SDK)      | stateward_service only in stateward._embedded (the launcher)  |
| stateward.* but client,    | no grpc, no protobuf, no stateward.v1: only the typed client, |
| _transport and wire        | its transports and the wire module know the protocol          |
| stateward.* but client,    | no stateward.wire, no stateward._transport: the engine, the   |
| _transport, wire and       | decorators and the CLI reach the server through the typed     |
| _embedded                  | client, in the vocabulary (the launcher makes transports)     |
| stateward._signals         | nothing of stateward; stateward._interrupt only _signals:     |
| stateward._interrupt       | interrupts and signals sit below the engine                   |

And outside the client, its transports and the launcher, no SDK code reaches into a client's
transport or its private calls (`_call`, `_do`, `_pages`).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = (ROOT / "client", ROOT / "service")

# The standard library a pure module may use: no files, sockets, processes, threads or loops.
PURE_STDLIB = frozenset(
    {
        "__future__",
        "abc",
        "collections",
        "dataclasses",
        "datetime",
        "enum",
        "functools",
        "itertools",
        "math",
        "typing",
    }
)
VOCABULARY = ("stateward.states", "stateward.runs")
# What the server may take from the SDK: the vocabulary, the wire module, the errors, the shared
# settings (default port and home), the reading of moments typed in filters and the generated
# code.
SERVER_MAY_USE_FROM_SDK = (
    *VOCABULARY,
    "stateward.wire",
    "stateward.exceptions",
    "stateward.ids",
    "stateward.settings",
    "stateward.times",
    "stateward.v1",
)
GRPC = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "google.protobuf", "google.rpc")
GRPC_LAYERS = (
    "stateward.v1",
    "stateward_service.grpc_api",
    "stateward_service.interceptors",
    "stateward_service.server",
    "stateward_service.validation",
)
# The domain: decides, records, fans out and sweeps, with no idea that gRPC exists.
DOMAIN = (
    "stateward_service.rules",
    "stateward_service.store",
    "stateward_service.model",
    "stateward_service.orchestrator",
    "stateward_service.broadcaster",
    "stateward_service.loops",
    "stateward_service.follower",
    "stateward_service.leadership",
    "stateward_service.names",
    "stateward_service.settings",
)
# Who may open the store (the orchestrator, and the replica that hands it the store), and what
# the others may take from it: values of the orchestrator's own signatures and errors.
STORE_OPENERS = ("stateward_service.orchestrator", "stateward_service.replica")
STORE_VALUES = (
    "stateward_service.store.RunFilter",
    "stateward_service.store.BadPageToken",
    "stateward_service.store.DatabaseRefused",
    "stateward_service.store.DatabaseUnavailable",
    "stateward_service.store.WriteConflict",
    "stateward_service.store.ChangeSignal",
    "stateward_service.store.PolledChangeSignal",  # a ChangeSignal the follower may poll
    "stateward_service.store.WriteNotices",  # when the follower polls it
    "stateward_service.store.LeaderLock",
    "stateward_service.store.StorageUnavailable",
    "stateward_service.store.WouldWait",  # the orchestrator's grouped writes raise it
)


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # what it imports: `a.b` for `import a.b`, `a.b.c` for `from a.b import c`
    line: int

    def __str__(self) -> str:
        return f"{self.module} (line {self.line}) imports {self.target}"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports_of(path: Path, root: Path) -> Iterator[Import]:
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield Import(module, f"{base}.{alias.name}", node.lineno)


def _all_imports() -> list[Import]:
    found = []
    for root in SOURCE_ROOTS:
        for path in sorted(root.rglob("*.py")):
            if "v1" in path.relative_to(root).parts[1:2]:
                continue  # generated code
            found.extend(_imports_of(path, root))
    return found


IMPORTS = _all_imports()


def _within(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


@dataclass(frozen=True)
class Arrow:
    """One rule of the layering: the imports of `modules` that `allows` refuses break it."""

    name: str
    modules: Callable[[str], bool]
    allows: Callable[[str], bool]

    def broken_by(self) -> list[str]:
        return [str(i) for i in IMPORTS if self.modules(i.module) and not self.allows(i.target)]


def _rules_may_import(target: str) -> bool:
    return target.split(".")[0] in PURE_STDLIB or _within(
        target, *VOCABULARY, "stateward_service.model", "stateward_service.rules"
    )


def _server_may_import(target: str) -> bool:
    if not _within(target, "stateward"):
        return True
    return _within(target, *SERVER_MAY_USE_FROM_SDK)


ARROWS = [
    Arrow(
        "the rules are pure: no store, no API, no grpc, no I/O",
        lambda module: _within(module, "stateward_service.rules"),
        _rules_may_import,
    ),
    Arrow(
        "the store knows nothing of gRPC",
        lambda module: _within(module, "stateward_service.store"),
        lambda target: not _within(target, *GRPC, *GRPC_LAYERS),
    ),
    Arrow(
        "the domain knows nothing of gRPC or protobuf",
        lambda module: _within(module, *DOMAIN),
        lambda target: not _within(target, *GRPC, *GRPC_LAYERS),
    ),
    Arrow(
        "the orchestrator is the only door to the store",
        lambda module: (
            _within(module, "stateward_service")
            and not _within(module, "stateward_service.store", *STORE_OPENERS)
        ),
        lambda target: not _within(target, "stateward_service.store") or target in STORE_VALUES,
    ),
    Arrow(
        "the server uses only the SDK's public vocabulary and wire modules, never its engine",
        lambda module: _within(module, "stateward_service"),
        _server_may_import,
    ),
    Arrow(
        "the SDK imports stateward_service only in the embedded launcher",
        lambda module: _within(module, "stateward") and module != "stateward._embedded",
        lambda target: not _within(target, "stateward_service"),
    ),
    Arrow(
        "only the typed client, its transports and the wire module know gRPC and protobuf",
        lambda module: _within(module, "stateward") and module not in SDK_PROTOCOL,
        lambda target: not _within(target, *GRPC, "stateward.v1"),
    ),
    Arrow(
        "the SDK engine, decorators and CLI reach the server only through the typed client",
        lambda module: (
            _within(module, "stateward") and module not in (*SDK_PROTOCOL, "stateward._embedded")
        ),
        lambda target: not _within(target, "stateward.wire", "stateward._transport"),
    ),
    Arrow(
        "signal handling imports nothing of the SDK",
        lambda module: module == "stateward._signals",
        lambda target: not _within(target, "stateward"),
    ),
    Arrow(
        "the interrupt machinery sits below the engine: of the SDK it imports only _signals",
        lambda module: module == "stateward._interrupt",
        lambda target: not _within(target, "stateward") or _within(target, "stateward._signals"),
    ),
]

# The SDK modules that know the protocol: the typed client, its transports, the wire module.
SDK_PROTOCOL = ("stateward.client", "stateward._transport", "stateward.wire")
# What only the client (and the transports and launcher that make it) may touch of a client.
CLIENT_INSIDES = frozenset({"_call", "_do", "_pages", "transport"})


def test_only_the_client_touches_its_transport_and_private_calls():
    reaching_in = []
    for path in sorted((ROOT / "client" / "stateward").rglob("*.py")):
        module = _module_name(path, ROOT / "client")
        if _within(module, "stateward.v1") or module in (*SDK_PROTOCOL, "stateward._embedded"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in CLIENT_INSIDES:
                reaching_in.append(f"{module} (line {node.lineno}) uses .{node.attr}")
    assert reaching_in == []


def test_the_import_walk_sees_both_packages():
    modules = {i.module for i in IMPORTS}
    for expected in (
        "stateward._embedded",
        "stateward._engine",
        "stateward.cli.app",
        "stateward_service.orchestrator",
        "stateward_service.rules.engine",
        "stateward_service.store",
    ):
        assert expected in modules


def test_the_walk_finds_imports_inside_functions():
    embedded = {i.target for i in IMPORTS if i.module == "stateward._embedded"}
    assert any(_within(target, "stateward_service") for target in embedded)


@pytest.mark.parametrize("arrow", ARROWS, ids=lambda arrow: arrow.name)
def test_arrow(arrow: Arrow):
    assert arrow.broken_by() == []
