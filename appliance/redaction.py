"""Redaction: secret values never leave the control plane in anything it writes.

`registry` is the process-wide set of secret values this process has revealed (a lease
redeemed, a signing secret loaded). Whatever the control plane writes goes through `scrub`
first: tool results and tool errors before they become checkpoints and model context, audit
and approval details, log lines (`observability` scrubs every record). A value is replaced by
`[redacted:<label>]`, where the label names the secret (tenant/integration/name), never its
content. Values shorter than `MIN_LENGTH` are not registered: replacing every "abc" in the
logs would hide more than it protects, and no credential is that short.

Each value is caught in the forms it takes when a program prints, logs or sends it without
meaning to hide it (`forms`): as it is and stripped; base64 and base64url of its UTF-8 bytes,
padded and unpadded, and also inside a longer base64 text (`Basic` auth of `user:secret`: the
characters that depend on the secret alone, at each of the three alignments); hex in either
case; percent-encoded (a token in a URL); and escaped as JSON or Python `repr` would.

What this cannot see: a value transformed on purpose or cut up (a hash, a slice, the value
reversed, XORed, split over two strings, or in another encoding such as base32 or gzip).
Tools get the value only inside their isolated process, and the control plane scrubs what
comes back; a tool that disguises a secret on purpose is out of reach of any string filter.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

MIN_LENGTH = 6


def forms(value: str) -> tuple[set[str], set[str]]:
    """The forms of `value` to catch: (exact, case-insensitive), each at least MIN_LENGTH."""
    exact: set[str] = set()
    folded: set[str] = set()
    for text in {value, value.strip()}:
        if len(text) < MIN_LENGTH:
            continue
        raw = text.encode()
        exact.update({text, json.dumps(text)[1:-1], repr(text)[1:-1]})
        exact.update({urllib.parse.quote(text, safe=""), urllib.parse.quote_plus(text)})
        folded.add(binascii.hexlify(raw).decode())
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            padded = encode(raw).decode()
            exact.update({padded, padded.rstrip("=")})
            exact.update(_base64_cores(raw, encode))
    return (
        {f for f in exact if len(f) >= MIN_LENGTH},
        {f for f in folded if len(f) >= MIN_LENGTH},
    )


def _base64_cores(raw: bytes, encode: Any) -> set[str]:
    """The characters of base64(prefix + raw + suffix) that depend on `raw` alone, for a
    prefix of 0, 1 and 2 bytes: how `raw` reads inside any longer base64 text."""
    cores = set()
    for shift in range(3):
        text: str = encode(bytes(shift) + raw + bytes(3)).decode()
        first = -(-shift * 8 // 6)  # the first character whose 6 bits are all raw's
        last = (shift + len(raw)) * 8 // 6  # one past the last such character
        cores.add(text[first:last])
    return cores


def _common_prefix(first: str, last: str) -> str:
    """The longest prefix of both (of the first and last of sorted words: of all of them)."""
    size = 0
    for a, b in zip(first, last, strict=False):
        if a != b:
            break
        size += 1
    return first[:size]


def _alternation(words: list[str]) -> str:
    """A regular expression matching any of `words` (sorted, distinct), as a prefix tree: at
    each position only the branches of the next character are tried, the longest wins."""
    optional = "" in words
    branches = []
    for _, group in itertools.groupby((w for w in words if w), key=lambda w: w[0]):
        members = list(group)
        prefix = _common_prefix(members[0], members[-1])
        rest = sorted({m[len(prefix) :] for m in members})
        branches.append(re.escape(prefix) + ("" if rest == [""] else _alternation(rest)))
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    return f"(?:{body})?" if optional else body


class Redactor:
    """A set of secret values, in each of their forms, and the labels that replace them."""

    def __init__(self) -> None:
        self._labels: dict[str, str] = {}  # exact form -> label
        self._folded: dict[str, str] = {}  # lower-case form (hex) -> label
        self._pattern: re.Pattern[str] | None = None
        self._longest = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._labels) + len(self._folded)

    @property
    def longest(self) -> int:
        """The length of the longest form known (how far a cut can reach into one)."""
        return self._longest

    def add(self, value: str | bytes, label: str) -> None:
        """Redact `value` (its UTF-8 text, for bytes) and its forms from now on."""
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        exact, folded = forms(text)
        with self._lock:
            for table, found in ((self._labels, exact), (self._folded, folded)):
                for form in found - table.keys():
                    table[form] = label
                    self._pattern = None
                    self._longest = max(self._longest, len(form))

    def _compiled(self) -> re.Pattern[str] | None:
        pattern = self._pattern
        if pattern is None and (self._labels or self._folded):
            with self._lock:
                parts = [_alternation(sorted(self._labels))] if self._labels else []
                if self._folded:
                    parts.append(f"(?i:{_alternation(sorted(self._folded))})")
                pattern = re.compile("|".join(parts))
                self._pattern = pattern
        return pattern

    def _label(self, match: re.Match[str]) -> str:
        found = match.group(0)
        label = self._labels.get(found) or self._folded.get(found.lower(), "?")
        return f"[redacted:{label}]"

    def scrub_text(self, text: str) -> str:
        """`text` with every known value replaced by its label."""
        pattern = self._compiled()
        if pattern is None:
            return text
        return pattern.sub(self._label, text)

    def clip(self, text: str, limit: int) -> str:
        """`text` scrubbed, then cut to `limit` characters (never cut first: the part of a
        value left by a cut is no longer recognised)."""
        return self.scrub_text(text)[:limit]

    def scrub_tail(self, text: str, limit: int) -> str:
        """About the last `limit` characters of `text`, scrubbed. `text` is itself the tail of
        something longer: a value cut by its start is dropped whole, so pass `limit` plus
        `longest` characters."""
        start = max(0, len(text) - limit)
        pattern = self._compiled()
        if pattern is not None and start:
            for match in pattern.finditer(text, max(0, start - self._longest)):
                if match.start() >= start:
                    break
                if match.end() > start:
                    start = match.start()
                    break
        return self.scrub_text(text[start:])

    def scrub(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string (keys too) scrubbed; a number whose
        digits hold a secret becomes the label's text."""
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
        if isinstance(value, int | float) and not isinstance(value, bool):
            shown = self.scrub_text(str(value))
            return value if shown == str(value) else shown
        return value

    def scrub_error(self, exc: BaseException) -> BaseException:
        """`exc` itself when neither its text nor that of any exception in its chain holds a
        secret; else a new exception of its type (or RuntimeError, when that type cannot be
        made from a message) with the scrubbed text, to be raised `from None`."""
        if not any(self._holds_secret(e) for e in _chain(exc)):
            return exc
        text = self.scrub_text(str(exc))
        for cause in list(_chain(exc))[1:]:
            text += f" (caused by {self.scrub_text(_describe(cause))})"
        fallback = RuntimeError(self.scrub_text(f"{type(exc).__name__}: {text}"))
        try:
            clean = type(exc)(text)
        except Exception:  # noqa: BLE001 - a constructor that wants other arguments
            return fallback
        return fallback if self._holds_secret(clean) or str(clean) != text else clean

    def _holds_secret(self, exc: BaseException) -> bool:
        shown = _describe(exc)
        return self.scrub_text(shown) != shown


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _chain(exc: BaseException) -> Iterable[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, once each."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


registry = Redactor()
