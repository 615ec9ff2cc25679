"""The console's web layer reaches the database only through the services handed to it."""

from __future__ import annotations

import ast
from pathlib import Path

import appliance.console

CONSOLE = Path(appliance.console.__file__).parent
BELOW = ("appliance.db", "appliance.operations", "appliance.details", "asyncpg")


def imported(path: Path) -> set[str]:
    """Every module `path` imports (`from a import b` counts as a and a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


class TestLayers:
    def test_no_console_module_imports_the_database(self) -> None:
        """No module of appliance.console imports appliance.db, operations or asyncpg."""
        offenders = {
            str(path.relative_to(CONSOLE)): sorted(
                name for name in imported(path) if name.startswith(BELOW)
            )
            for path in sorted(CONSOLE.rglob("*.py"))
        }

        assert {name: found for name, found in offenders.items() if found} == {}
        assert len(offenders) >= 6
