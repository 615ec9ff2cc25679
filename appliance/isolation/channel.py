"""The private channel between the control plane and a tool process: a socket pair.

Frames are a 4-byte big-endian length and a JSON object with an `op`. The control plane reads
what a tool process sends as untrusted input: a frame over `MAX_FRAME` bytes, or one that is
not a JSON object with a string `op`, ends the call (`ChannelError`).
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from appliance import errors

MAX_FRAME = 4 * 1024 * 1024
MAX_CAUSES = 5  # the causes of a tool's exception an `error` frame carries
_HEADER = struct.Struct(">I")


class ChannelError(errors.ApplianceError):
    """The other end of a tool channel broke the protocol or went away."""


async def send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    """Write one frame."""
    body = json.dumps(message, allow_nan=False, default=str).encode()
    if len(body) > MAX_FRAME:
        raise ChannelError(f"a {message.get('op')!r} frame of {len(body)} bytes is over the limit")
    writer.write(_HEADER.pack(len(body)) + body)
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> dict[str, Any]:
    """Read one frame; ChannelError on EOF, an oversized frame or one that is not an op."""
    try:
        (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        if size > MAX_FRAME:
            raise ChannelError(f"frame of {size} bytes is over the {MAX_FRAME}-byte limit")
        body = await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise ChannelError("the channel closed") from exc
    try:
        message = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ChannelError(f"frame is not JSON: {exc}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ChannelError("frame is not an object with a string 'op'")
    return message
