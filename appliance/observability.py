"""Structured logs: one JSON object per line on stderr (journald), with a stable `event` key.

Every line is scrubbed of the secret values the process knows (`redaction.registry`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, TextIO

from appliance import redaction

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "event", "msg", ...extra}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", record.name),
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(redaction.registry.scrub(_plain(entry)), default=str)


def _plain(entry: dict[str, Any]) -> dict[str, Any]:
    """Values JSON cannot hold as their text, so they are scrubbed like the rest."""
    return {
        key: value
        if isinstance(value, str | int | float | bool | None | list | dict)
        else str(value)
        for key, value in entry.items()
    }


class TextFormatter(logging.Formatter):
    """Plain lines for a terminal, scrubbed."""

    def format(self, record: logging.LogRecord) -> str:
        return redaction.registry.scrub_text(super().format(record))


def configure(level: str = "INFO", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Send the root logger to stderr as JSON lines (or plain text for a terminal)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
