"""The public port under abuse, over raw sockets: malformed requests get a bare status with no
echo and no banner, connections are capped per source and in total, slow senders are closed,
unverified bodies are bounded by the budget, and a storm of client mistakes makes a bounded
number of log lines without tracebacks. Sources are told apart by binding the client to other
loopback addresses (127.0.0.2, 127.0.0.3, ...)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from appliance import settings
from appliance.db import pool as dbpool
from appliance.ingress import public, webhooks
from tests.integration import test_webhooks as hooks

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

MARKER = b"EchoMarker7"
SOURCE_PATH = b"/hooks/default/billing"
WAIT = 20.0


@contextlib.asynccontextmanager
async def port(
    db: dbpool.Pool, *, limits: public.Limits | None = None, **config: Any
) -> AsyncIterator[tuple[public.Listener, webhooks.Endpoint]]:
    """The endpoint of test_webhooks' sources on 127.0.0.1 within `limits`."""
    ingress = settings.IngressSettings(enabled=True, sources=hooks.sources(), **config)
    async with hooks.durable_intake(db) as intake:
        endpoint = webhooks.Endpoint(ingress, intake)
        listener = await public.listen(
            endpoint, host="127.0.0.1", port=0, limits=limits or public.Limits.of(ingress)
        )
        try:
            yield listener, endpoint
        finally:
            await listener.close()


async def connect(
    listener: public.Listener, source: str = "127.0.0.2"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection to the port from `source`."""
    return await asyncio.open_connection("127.0.0.1", listener.port, local_addr=(source, 0))


async def exchange(listener: public.Listener, raw: bytes, *, source: str = "127.0.0.2") -> bytes:
    """Send `raw`, read until the server closes (or WAIT passes); what came back."""
    reader, writer = await connect(listener, source)
    try:
        writer.write(raw)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        async with asyncio.timeout(WAIT):
            return await read_all(reader)
    finally:
        writer.close()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    """The status code of the first answer in `answer`."""
    return int(answer.split(b" ", 2)[1])


def request(
    body: bytes = b"{}",
    *,
    path: bytes = SOURCE_PATH,
    extra: bytes = b"",
    length: bool = True,
    keep: bool = False,
) -> bytes:
    """A POST of `body` with optional extra header lines (`Connection: close` unless `keep`)."""
    head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + extra
    if not keep:
        head += b"Connection: close\r\n"
    if length:
        head += b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    return head + b"\r\n" + body


def signed_request(body: bytes, delivery_id: str, *, extra: bytes = b"") -> bytes:
    headers = hooks.signed(body, delivery_id)
    lines = b"".join(f"{name}: {value}\r\n".encode() for name, value in headers.items())
    return request(body, extra=lines + extra)


MALFORMED = {
    "garbage request line": b"GARBAGE " + MARKER + b"\r\n\r\n",
    "control byte in the path": b"GET /\x01" + MARKER + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "TLS on the plain port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + MARKER,
    "unknown HTTP version": b"POST / HTTP/7.1\r\nX-M: " + MARKER + b"\r\n\r\n",
    "header without a colon": b"POST / HTTP/1.1\r\nHost: x\r\n" + MARKER + b"\r\n\r\n",
    "space before the colon": b"POST / HTTP/1.1\r\nHost : " + MARKER + b"\r\n\r\n",
    "NUL in a header": b"POST / HTTP/1.1\r\nX-A: a\x00" + MARKER + b"\r\n\r\n",
    "invalid chunk size": request(
        MARKER + b"\r\n", extra=b"Transfer-Encoding: chunked\r\n", length=False
    ),
    "chunk without its end": request(
        b"5\r\n" + MARKER[:5] + b"XX\r\n0\r\n\r\n",
        extra=b"Transfer-Encoding: chunked\r\n",
        length=False,
    ),
    "length and chunked": request(MARKER, extra=b"Transfer-Encoding: chunked\r\n"),
    "two lengths": request(MARKER, extra=b"Content-Length: 3\r\n"),
    "negative length": request(
        b"", extra=b"Content-Length: -1" + MARKER[:0] + b"\r\n", length=False
    ),
    "huge header": request(b"", extra=b"X-Big: " + MARKER + b"a" * 9000 + b"\r\n"),
    "huge request line": b"POST /" + MARKER + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
    "too many headers": request(
        b"", extra=b"".join(b"X-%d: %s\r\n" % (n, MARKER) for n in range(200))
    ),
    "pipelined garbage": request(b"{}") + b"\x00\x01GARBAGE " + MARKER + b"\r\n\r\n",
    "obsolete line folding": request(b"", extra=b"X-A: a\r\n " + MARKER + b"\r\n"),
}


class TestMalformedRequests:
    @pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
    async def test_a_bare_4xx_without_echo_or_banner(self, db: dbpool.Pool, raw: bytes) -> None:
        """A 4xx, then the connection closes; no answer carries the request's bytes or a
        Server header, and nothing is enqueued."""
        async with port(db) as (listener, _):
            answer = await exchange(listener, raw)
        assert answer.startswith(b"HTTP/1."), answer[:200]
        statuses = [
            int(line.split(b" ")[1])
            for line in answer.split(b"\r\n")
            if line.startswith(b"HTTP/1.")
        ]
        assert statuses[-1] // 100 == 4, answer[:200]
        assert MARKER not in answer
        assert b"server:" not in answer.lower()
        assert b"aiohttp" not in answer.lower()
        assert b"python" not in answer.lower()
        assert await hooks.tasks(db) == []

    async def test_http_0_9_is_closed_at_the_header_deadline(self, db: dbpool.Pool) -> None:
        """`GET /` without a version is never a request: 408 at the header deadline, closed."""
        limits = public.Limits(header_timeout=0.5)
        async with port(db, limits=limits) as (listener, _):
            answer = await exchange(listener, b"GET /\r\n")
        assert status_of(answer) in (400, 408)
        assert b"server:" not in answer.lower()

    async def test_no_answer_of_the_port_names_its_software(self, db: dbpool.Pool) -> None:
        """Accepted, refused and not found alike: no Server header."""
        async with port(db) as (listener, _):
            answers = [
                await exchange(listener, signed_request(b"{}", "msg_1")),
                await exchange(listener, request(b"{}")),
                await exchange(listener, request(b"{}", path=b"/nothing")),
            ]
        assert [status_of(a) for a in answers] == [202, 400, 404]
        assert all(b"server:" not in a.lower() for a in answers)


class TestExpectContinue:
    async def test_an_over_limit_length_is_refused_before_100_continue(
        self, db: dbpool.Pool
    ) -> None:
        """Expect: 100-continue with a Content-Length over the source's limit: 413 at once,
        never 100 Continue."""
        async with port(db) as (listener, _):
            reader, writer = await connect(listener)
            writer.write(
                b"POST /hooks/default/tiny HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: 10000000\r\n\r\n"
            )
            async with asyncio.timeout(WAIT):
                answer = await read_all(reader)
            writer.close()
        assert status_of(answer) == 413
        assert b"100 Continue" not in answer

    async def test_an_acceptable_length_gets_100_continue_then_its_answer(
        self, db: dbpool.Pool
    ) -> None:
        """Within the limit: 100 Continue, then the body is read and answered."""
        body = b'{"n": 1}'
        async with port(db) as (listener, _):
            reader, writer = await connect(listener)
            head = signed_request(body, "msg_1", extra=b"Expect: 100-continue\r\n")
            writer.write(head[: -len(body)])
            async with asyncio.timeout(WAIT):
                interim = await reader.readuntil(b"\r\n\r\n")
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(body)
            async with asyncio.timeout(WAIT):
                final = await reader.readuntil(b"\r\n\r\n")
            writer.close()
        assert status_of(final) == 202

    async def test_an_unknown_expectation_is_417(self, db: dbpool.Pool) -> None:
        """Expect: anything else is refused."""
        async with port(db) as (listener, _):
            answer = await exchange(listener, request(b"{}", extra=b"Expect: teapot\r\n"))
        assert status_of(answer) == 417


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `condition` until true, failing after WAIT."""
    deadline = time.monotonic() + WAIT
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def closed(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before closing the connection (within WAIT)."""
    async with asyncio.timeout(WAIT):
        return await read_all(reader)


class TestConnectionCaps:
    async def test_a_source_over_its_cap_is_refused_and_others_are_served(
        self, db: dbpool.Pool
    ) -> None:
        """Five idle connections from one address fill its cap: its sixth gets 503 and is
        closed; another address still delivers."""
        limits = public.Limits(connections=50, per_address=5)
        async with port(db, limits=limits) as (listener, _):
            held = [await connect(listener, "127.0.0.2") for _ in range(5)]
            await until(lambda: _true(listener.open_connections == 5), "five connections")
            reader, writer = await connect(listener, "127.0.0.2")
            refused = await closed(reader)
            writer.close()
            answer = await exchange(listener, signed_request(b"{}", "msg_1"), source="127.0.0.3")
            for _, held_writer in held:
                held_writer.close()
        assert status_of(refused) == 503
        assert b"Retry-After: 1" in refused
        assert status_of(answer) == 202

    async def test_the_total_is_capped_across_sources(self, db: dbpool.Pool) -> None:
        """Twelve connections from four addresses fill a total of 12: the next one, from a
        fifth address, is refused; once one closes, it is served."""
        limits = public.Limits(connections=12, per_address=3)
        async with port(db, limits=limits) as (listener, _):
            held = [await connect(listener, f"127.0.0.{2 + n // 3}") for n in range(12)]
            await until(lambda: _true(listener.open_connections == 12), "twelve connections")
            refused = await exchange(listener, signed_request(b"{}", "m"), source="127.0.0.9")
            held[0][1].close()
            await until(lambda: _true(listener.open_connections == 11), "a place")
            served = await exchange(listener, signed_request(b"{}", "m"), source="127.0.0.9")
            for _, writer in held[1:]:
                writer.close()
        assert (status_of(refused), status_of(served)) == (503, 202)
        await until(lambda: _true(listener.open_connections == 0), "every connection gone")


async def _true(value: bool) -> bool:
    return value


class TestSlowSenders:
    async def test_headers_sent_byte_by_byte_are_cut_at_the_deadline(self, db: dbpool.Pool) -> None:
        """Slowloris: a byte of header every 50 ms never completes a request; 408, closed."""
        limits = public.Limits(header_timeout=0.5)
        async with port(db, limits=limits) as (listener, _):
            reader, writer = await connect(listener)

            async def dribble() -> None:
                with contextlib.suppress(ConnectionError):
                    for byte in request(b"{}")[:-4]:
                        writer.write(bytes([byte]))
                        await writer.drain()
                        await asyncio.sleep(0.05)

            dribbler = asyncio.create_task(dribble())
            answer = await closed(reader)
            dribbler.cancel()
            writer.close()
        assert status_of(answer) == 408

    async def test_a_slow_body_is_cut_at_the_deadline(self, db: dbpool.Pool) -> None:
        """Headers promise 100 bytes, 10 arrive: 408 with its reason once body_timeout passes."""
        async with port(db, body_timeout_seconds=0.5) as (listener, endpoint):
            reader, writer = await connect(listener)
            writer.write(request(b"{}")[:-2].replace(b"Length: 2", b"Length: 100") + b"{" * 10)
            answer = await closed(reader)
            writer.close()
            assert endpoint.budget.used == 0
        assert status_of(answer) == 408
        assert b"did not arrive" in answer

    async def test_an_idle_kept_alive_connection_is_closed(self, db: dbpool.Pool) -> None:
        """After its answer, a connection that sends nothing more is closed."""
        limits = public.Limits(keepalive_timeout=0.5)
        async with port(db, limits=limits) as (listener, _):
            reader, writer = await connect(listener)
            writer.write(request(b"{}", keep=True))
            answer = await closed(reader)
            writer.close()
        assert status_of(answer) == 400

    async def test_a_connection_serves_at_most_keepalive_requests(self, db: dbpool.Pool) -> None:
        """The third request of a 3-request connection is answered with Connection: close."""
        limits = public.Limits(keepalive_requests=3)
        async with port(db, limits=limits) as (listener, _):
            answer = await exchange(listener, request(b"{}", keep=True) * 5)
        assert answer.count(b"HTTP/1.1 400") == 3
        assert answer.lower().count(b"connection: close") == 1

    async def test_a_head_that_never_ends_is_cut(self, db: dbpool.Pool) -> None:
        """Header lines past 64 KiB without the blank line: 431 (or 400), closed."""
        lines = b"".join(b"X-%d: %s\r\n" % (n, b"a" * 8000) for n in range(12))
        async with port(db) as (listener, _):
            answer = await exchange(listener, b"POST / HTTP/1.1\r\n" + lines)
        assert status_of(answer) in (400, 431)


class TestBodyBudget:
    async def test_a_declared_body_over_the_budget_is_503_before_reading(
        self, db: dbpool.Pool
    ) -> None:
        """Two held 1 MiB bodies fill a 2 MiB budget: a third declared one is 503 with
        Retry-After at once; when the holders hang up, the budget is free again."""
        length = settings.MEBIBYTE
        head = request(b"", extra=f"Content-Length: {length}\r\n".encode(), length=False)
        async with port(db, body_budget_bytes=2 * length) as (listener, endpoint):
            held = []
            for n in range(2):
                reader, writer = await connect(listener, f"127.0.0.{2 + n}")
                writer.write(head + b"x" * 1000)
                held.append((reader, writer))
            await until(lambda: _true(endpoint.budget.used == 2 * length), "a full budget")
            refused = await exchange(listener, head, source="127.0.0.5")
            for _, writer in held:
                writer.close()
            await until(lambda: _true(endpoint.budget.used == 0), "the budget given back")
            served = await exchange(listener, signed_request(b"{}", "m"), source="127.0.0.5")
        assert status_of(refused) == 503
        assert b"Retry-After" in refused
        assert status_of(served) == 202

    async def test_a_chunked_body_is_counted_as_it_arrives(self, db: dbpool.Pool) -> None:
        """Without a length, a body is counted chunk by chunk: one that outgrows what is left
        of the budget is 503 and the budget is given back."""
        length = settings.MEBIBYTE
        async with port(db, body_budget_bytes=length) as (listener, endpoint):
            _, holder_writer = await connect(listener, "127.0.0.2")
            holder_writer.write(
                request(b"", extra=f"Content-Length: {length - 1000}\r\n".encode(), length=False)
            )
            await until(lambda: _true(endpoint.budget.used > 0), "a held budget")
            chunk = b"%x\r\n%s\r\n" % (4096, b"y" * 4096)
            answer = await exchange(
                listener,
                request(b"", extra=b"Transfer-Encoding: chunked\r\n", length=False) + chunk * 4,
                source="127.0.0.3",
            )
            holder_writer.close()
            await until(lambda: _true(endpoint.budget.used == 0), "the budget given back")
        assert status_of(answer) == 503


class TestLogStorm:
    async def test_a_storm_of_client_mistakes_logs_a_bounded_number_of_lines(
        self, db: dbpool.Pool, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Hundreds of malformed requests, hang-ups mid-body, forgeries and unknown paths:
        a few lines per kind, none with a traceback, none above WARNING."""
        caplog.set_level(logging.DEBUG)
        sent = 0
        async with port(db) as (listener, _):
            caplog.clear()
            for round_ in range(20):
                for raw in MALFORMED.values():
                    await exchange(listener, raw)
                    sent += 1
                forged = signed_request(b"{}", f"f{round_}").replace(b"v1,", b"v1,AAAA")
                await exchange(listener, forged)
                await exchange(listener, request(b"{}", path=b"/admin"))
                _, writer = await connect(listener)
                writer.write(request(b"{}")[:-2].replace(b"Length: 2", b"Length: 5000") + b"{")
                await writer.drain()
                writer.close()
                sent += 3
        records = [r for r in caplog.records if r.levelno >= logging.INFO]
        assert sent >= 400
        assert len(records) <= 40, [r.getMessage() for r in records]
        assert not [r for r in records if r.exc_info or r.levelno > logging.WARNING]
