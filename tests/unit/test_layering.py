"""The server imports only the SDK's public modules (the vocabulary, the wire, the generated
code, settings, exceptions), never a private `stateward._*` one."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service" / "stateward_service"


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_server_imports_no_private_sdk_module():
    private = {
        f"{path.relative_to(SERVICE)}: {module}"
        for path in SERVICE.rglob("*.py")
        for module in imported_modules(path)
        if module.startswith("stateward.")
        and any(part.startswith("_") for part in module.split(".")[1:])
    }
    assert not private
