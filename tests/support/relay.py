"""Each person's browser on the tailnet: a loopback port whose connections reach the console
from that person's own address.

A browser cannot choose its source address, and on loopback the kernel gives every connection
127.0.0.1. A relay listens on 127.0.0.1 and opens each connection to the console from the
person's address (127.0.0.2, 127.0.0.3, ...), copying bytes both ways and changing none: the
console still knows the person only by `tailscale whois` of the peer address, as on the
tailnet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def relay(port: int, source: str) -> AsyncIterator[str]:
    """The base URL of a relay to the console on 127.0.0.1:`port` from `source`."""
    pipes: set[asyncio.Task[None]] = set()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError:
            writer.close()
            return
        for task in (
            asyncio.create_task(_pipe(reader, upstream[1])),
            asyncio.create_task(_pipe(upstream[0], writer)),
        ):
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in list(pipes):
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        await server.wait_closed()
