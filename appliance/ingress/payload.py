"""A verified delivery as its task's input, or the one-line reason the sender must fix it.

The input is `{"source", "delivery_id", "headers", "body"}`: `headers` holds the forwarded
headers that are present (never a signature or a timestamp, so a retry the sender signs again
is the same input); `body` is the body as JSON when it parses as JSON, else its text, else
(not UTF-8, or text with a NUL character, which Postgres cannot hold) null with the bytes in
`body_base64`.

A body that parses as JSON must be JSON the task can keep exactly as sent, else the delivery is
refused with MalformedDeliveryError (400), whose message says what to fix and quotes nothing of
the body:

- numbers: no NaN or Infinity (not JSON, though some encoders write them), none beyond the
  range of a double (`1e999`), no integer of more than `MAX_INTEGER_DIGITS` digits;
- strings and keys: no `\\u0000` and no lone surrogate (`\\ud800`): Postgres stores neither;
- objects: no key twice (which of the two would the task see?);
- nesting: at most `MAX_DEPTH` arrays and objects deep.

Forwarded header values must be text Postgres can store too (a header of bytes that are not
UTF-8 reaches us as lone surrogates).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from typing import Any

from appliance.ingress import signatures

FORWARDED_HEADERS = (
    "content-type",
    "user-agent",
    "webhook-id",
    "svix-id",
    "x-github-event",
    "x-github-delivery",
    "x-github-hook-id",
    "x-github-hook-installation-target-id",
    "x-github-hook-installation-target-type",
)
MAX_DEPTH = 64
MAX_INTEGER_DIGITS = 1000


class _Unstorable(Exception):  # noqa: N818 - a reason, raised out of json's hooks
    """The body is JSON the task could not keep as sent."""


def task_input(
    *, source: str, delivery_id: str, headers: Mapping[str, str], body: bytes
) -> dict[str, Any]:
    """The task input of a verified delivery; MalformedDeliveryError when it cannot be kept."""
    forwarded = {name: headers[name] for name in FORWARDED_HEADERS if name in headers}
    for name, value in forwarded.items():
        if not _storable(value):
            raise signatures.MalformedDeliveryError(
                f"the {name} header is not UTF-8 text without NUL characters"
            )
    return {"source": source, "delivery_id": delivery_id, "headers": forwarded, **_body(body)}


def _body(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return _opaque(body)
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_constant=_constant,
            parse_float=_float,
            parse_int=_integer,
        )
        _check(value)
    except _Unstorable as exc:
        raise signatures.MalformedDeliveryError(f"the body is JSON that {exc}") from None
    except RecursionError:
        raise signatures.MalformedDeliveryError(
            f"the body is JSON nested more than {MAX_DEPTH} deep"
        ) from None
    except ValueError:  # not JSON: the body is handed over as it came
        return {"body": text} if "\x00" not in text else _opaque(body)
    return {"body": value}


def _opaque(body: bytes) -> dict[str, Any]:
    return {"body": None, "body_base64": base64.b64encode(body).decode("ascii")}


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise _Unstorable("has a key twice in one object")
    return value


def _constant(name: str) -> Any:
    raise _Unstorable("has NaN or Infinity, which JSON does not allow")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Unstorable("has a number beyond the range of a double (about 1.8e308)")
    return value


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise _Unstorable(f"has an integer of more than {MAX_INTEGER_DIGITS} digits")
    return int(text)


def _storable(text: str) -> bool:
    """True when Postgres can store the text: no NUL, no lone surrogate."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check(value: Any) -> None:
    """Every string storable and no deeper than MAX_DEPTH (iteratively: no recursion)."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if not _storable(item):
                raise _Unstorable(
                    "has a NUL character or a lone surrogate (\\u0000, \\ud800-\\udfff), "
                    "which Postgres cannot store"
                )
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise _Unstorable(f"is nested more than {MAX_DEPTH} deep")
            if isinstance(item, dict):
                pending.extend((key, depth) for key in item)
                pending.extend((child, depth + 1) for child in item.values())
            else:
                pending.extend((child, depth + 1) for child in item)
