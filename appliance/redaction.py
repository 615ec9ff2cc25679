"""Redaction: secret values never leave the control plane in anything it writes.

`registry` is the process-wide set of secret values this process has revealed (a lease
redeemed, a signing secret loaded). Whatever the control plane writes goes through `scrub`
first: tool results before they become checkpoints and model context, audit and approval
details, log lines (`observability` scrubs every record). A value is replaced by
`[redacted:<label>]`, where the label names the secret (tenant/integration/name), never its
content. Values shorter than `MIN_LENGTH` are not registered: replacing every "abc" in the
logs would hide more than it protects, and no credential is that short.

What this cannot see: a transformed value (base64 of a secret, a hash of it, a slice of it).
Tools get the value only inside their isolated process, and the control plane scrubs what
comes back; a tool that encodes a secret on purpose is out of reach of any string filter.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

MIN_LENGTH = 6


class Redactor:
    """A set of secret values and the labels that replace them."""

    def __init__(self) -> None:
        self._labels: dict[str, str] = {}
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._labels)

    def add(self, value: str | bytes, label: str) -> None:
        """Redact `value` (and its UTF-8 text, for bytes) from now on."""
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        for variant in {text, text.strip()}:
            if len(variant) >= MIN_LENGTH:
                with self._lock:
                    if variant not in self._labels:
                        self._labels[variant] = label
                        self._pattern = None

    def _compiled(self) -> re.Pattern[str] | None:
        pattern = self._pattern
        if pattern is None and self._labels:
            with self._lock:
                longest_first = sorted(self._labels, key=len, reverse=True)
                pattern = re.compile("|".join(re.escape(v) for v in longest_first))
                self._pattern = pattern
        return pattern

    def scrub_text(self, text: str) -> str:
        """`text` with every known value replaced by its label."""
        pattern = self._compiled()
        if pattern is None:
            return text
        return pattern.sub(lambda m: f"[redacted:{self._labels.get(m.group(0), '?')}]", text)

    def scrub(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string (keys too) scrubbed."""
        if self._compiled() is None:
            return value
        return self._scrub(value)

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub_text(value)
        if isinstance(value, Mapping):
            return {self._scrub(k): self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        return value


registry = Redactor()
