"""A name server over TCP only, for the tests of name resolution inside a tool process.

`python -m tests.support.dns ADDRESS IPV4` listens on ADDRESS port 53 (TCP), prints one JSON
line `{"ready": true}`, and answers every A question with IPV4 (AAAA and the rest: no answer)
until its stdin closes. Run it inside a network namespace of its own (`tests.support.netns`):
port 53 needs root, and nothing else there uses it.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import struct
import sys
from collections.abc import Sequence

PORT = 53
_A = 1
_FLAGS = 0x8180  # a response, recursion desired and available, no error


def answer(query: bytes, address: str) -> bytes:
    """The response to one DNS query: `address` for an A question, no record otherwise."""
    (ident,) = struct.unpack("!H", query[:2])
    end = 12
    while query[end]:
        end += query[end] + 1
    question = query[12 : end + 5]
    kind = struct.unpack("!H", query[end + 1 : end + 3])[0]
    records = b""
    if kind == _A:
        records = struct.pack("!HHHIH", 0xC00C, _A, 1, 60, 4)
        records += ipaddress.IPv4Address(address).packed
    header = struct.pack("!HHHHHH", ident, _FLAGS, 1, 1 if records else 0, 0, 0)
    return header + question + records


async def serve(host: str, address: str) -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                reply = answer(await reader.readexactly(size), address)
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(client, host, PORT)
    print(json.dumps({"ready": True}), flush=True)
    async with server:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.dns")
    parser.add_argument("host")
    parser.add_argument("address")
    arguments = parser.parse_args(argv)
    asyncio.run(serve(arguments.host, arguments.address))


if __name__ == "__main__":
    main()
