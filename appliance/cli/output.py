"""What the CLI prints: data to stdout (tables for people, JSON for machines), words to stderr.

Under `--json` every command prints ONE JSON document on stdout: an object, or an array for a
listing. One encoder (`jsonable`) turns every value a command reports into JSON: money
(`Decimal`) as a string of its exact digits, dates and times as ISO 8601, durations as seconds,
paths as strings, bytes as base64, enums as their value, pydantic models and dataclasses as
objects. Errors stay words on stderr (`appliance: error: ...`) with the exit code; stdout then
holds nothing, or the report of a command that reports and fails (`doctor`, `audit verify`,
`exposure-check`, `docs add`).

For people, `show` commands print every text whole (wrapped to the terminal when stdout is
one, never cut); a listing may cut long cells, marks each with `...` and says on stderr which
command shows them whole.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import getpass
import ipaddress
import json
import os
import shutil
import sys
import textwrap
import uuid
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

import pydantic

CELL_LIMIT = 60  # characters of a listing's cell before it is cut
CUT_MARK = "..."


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


# ---- output ------------------------------------------------------------------------------------


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    sys.stderr.write(text + "\n")


def emit_json(data: Any) -> None:
    """The command's one JSON document on stdout."""
    out(json.dumps(data, indent=2, default=jsonable, allow_nan=False))


def jsonable(value: Any) -> Any:
    """A JSON-ready stand-in for a value `json` cannot encode itself (its `default=`)."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath | uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, pydantic.SecretStr | pydantic.SecretBytes):
        return str(value)  # the asterisks, never the value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return fields(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    raise TypeError(f"the CLI cannot print a {type(value).__name__} as JSON")


def fields(row: Any) -> dict[str, Any]:
    """A dataclass row as a dict of its fields (their values encoded by `jsonable`)."""
    return {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}


def table(
    rows: Sequence[Sequence[Any]], headers: Sequence[str], *, whole_in: str | None = None
) -> None:
    """Columns for people. Cells are whole unless `whole_in` names the command that shows a row
    whole (`appliance task show ID`): then a cell past CELL_LIMIT characters is cut (ending in
    `...`), and stderr says where to read it whole."""
    whole = [[cell(v) for v in row] for row in rows]
    cut = whole_in is not None and any(len(c) > CELL_LIMIT for row in whole for c in row)
    cells = [
        [
            c[: CELL_LIMIT - len(CUT_MARK)] + CUT_MARK if cut and len(c) > CELL_LIMIT else c
            for c in row
        ]
        for row in whole
    ]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    out("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        out("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if cut:
        err(
            f"cells ending in {CUT_MARK} are cut at {CELL_LIMIT} characters; "
            f"`{whole_in}` shows them whole"
        )


def cell(value: Any) -> str:
    """A value as one line of text, whole."""
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), default=jsonable)
    text = str(value)
    return " ".join(text.split()) if "\n" in text else text  # a table row is one line


def field(name: str, value: Any, *, width: int) -> None:
    """`name` padded to `width`, then the whole value: its own lines kept, and on a terminal
    wrapped to its width (never cut); a pipe gets each line whole."""
    text = value if isinstance(value, str) else cell(value)
    columns = shutil.get_terminal_size().columns if sys.stdout.isatty() else 0
    room = columns - width
    lines: list[str] = []
    for line in text.splitlines() or [""]:
        if room >= 20 and len(line) > room:
            lines.extend(textwrap.wrap(line, room, break_on_hyphens=False) or [""])
        else:
            lines.append(line)
    out(f"{name:<{width}}{lines[0]}".rstrip())
    for line in lines[1:]:
        out((" " * width + line).rstrip())
