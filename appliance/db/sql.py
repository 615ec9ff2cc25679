"""Loads the named SQL blocks of `appliance/db/sql/<area>.sql`.

A block starts with `-- name: verb_noun`, then one comment line that says what it does, then
the statement with `$1..$n` placeholders (comment lines inside a
block are dropped). Values are never spliced into SQL text.
"""

from __future__ import annotations

import functools
import importlib.resources
import re

from appliance import errors

_HEADER = re.compile(r"^-- name: ([a-z][a-z0-9_]*)\s*$", re.MULTILINE)


@functools.cache
def load(area: str) -> dict[str, str]:
    """All named statements of one area, by name."""
    text = importlib.resources.files("appliance.db").joinpath("sql", f"{area}.sql").read_text()
    return parse(text, area)


def parse(text: str, area: str) -> dict[str, str]:
    """Split a file's text into {name: statement}; reject duplicates and empty blocks."""
    headers = list(_HEADER.finditer(text))
    queries: dict[str, str] = {}
    for i, header in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        body = [line for line in text[header.end() : end].splitlines() if not line.startswith("--")]
        statement = "\n".join(body).strip().rstrip(";").strip()
        name = header.group(1)
        if not statement:
            raise errors.ApplianceError(f"sql/{area}.sql: query {name} has no statement")
        if name in queries:
            raise errors.ApplianceError(f"sql/{area}.sql: query {name} is defined twice")
        queries[name] = statement
    return queries


def areas() -> list[str]:
    """Every area that has a SQL file, for the test that prepares them all."""
    folder = importlib.resources.files("appliance.db").joinpath("sql")
    return sorted(p.name[: -len(".sql")] for p in folder.iterdir() if p.name.endswith(".sql"))
