"""The public port's HTTP server: aiohttp's low-level server, hardened for strangers.

What it adds to aiohttp, each bound from `ingress.*` settings (`Limits`):

- connection caps (`guard.Connections`), checked as a connection is accepted: one over a cap
  gets a bare `503` with `Retry-After` and is closed at once;
- a header deadline: a connection's first request line and headers must be complete within
  `header_timeout_seconds` of its opening, else a bare `408` and the connection is closed;
  later requests on a kept-alive connection get `keepalive_timeout_seconds` after the previous
  answer (aiohttp's keep-alive timer, which also closes idle connections); at most
  `MAX_REQUEST_HEAD_BYTES` arrive before a request's headers are complete (`431`);
- at most `keepalive_requests` requests per connection;
- a malformed request (request line, header, chunked encoding, sizes: whatever aiohttp's parser
  refuses) is answered with a bare status and no body, so nothing of the request is echoed;
  no answer of this port carries a `Server` header;
- a client's mistake is logged as a throttled line without a traceback (`guard.Throttle`);
  tracebacks are for our own bugs.

The handler gets each request once its headers are complete; reading the body, with its
deadline and the body budget, is its job (`webhooks`). Nothing here knows about webhooks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from appliance import settings
from appliance.ingress import guard

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 8190
MAX_FIELD_BYTES = 8190
MAX_HEADERS = 48
MAX_REQUEST_HEAD_BYTES = 64 * 1024
LINGER_SECONDS = 2.0
"""How long an answered request's unread body is read and dropped before the connection
closes (so the client sees the answer rather than a reset)."""

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _bare(status: int, reason: str, *extra: str) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Length: 0", "Connection: close", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


BUSY = _bare(503, "Service Unavailable", "Retry-After: 1")
TIMED_OUT = _bare(408, "Request Timeout")
HEAD_TOO_LARGE = _bare(431, "Request Header Fields Too Large")


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of the public port."""

    connections: int = 512
    per_address: int = 32
    header_timeout: float = 10.0
    keepalive_timeout: float = 15.0
    keepalive_requests: int = 100

    @classmethod
    def of(cls, config: settings.IngressSettings, *, connections: int | None = None) -> Limits:
        """The configured limits; `connections` (sized to the open-files limit) replaces the
        configured total when given."""
        total = config.max_connections if connections is None else connections
        return cls(
            connections=total,
            per_address=min(config.max_connections_per_address, total),
            header_timeout=config.header_timeout_seconds,
            keepalive_timeout=config.keepalive_timeout_seconds,
            keepalive_requests=config.keepalive_requests,
        )


@dataclasses.dataclass(slots=True)
class _Shared:
    limits: Limits
    connections: guard.Connections
    throttle: guard.Throttle

    def mistake(self, kind: str, message: str, *args: object) -> None:
        """A client's mistake: one warning per kind and period, without a traceback."""
        left_out = self.throttle.admit(kind)
        if left_out is None:
            return
        log.warning(
            "%s%s",
            message % args,
            f" ({left_out} more like it not logged)" if left_out else "",
            extra={"event": kind, "left_out": left_out},
        )


class _Request(web.BaseRequest):
    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        # The one hook aiohttp runs after adding its default headers and before sending them:
        # every answer of this port, protocol errors included, goes without a Server banner.
        response.headers.popall(hdrs.SERVER, None)


class _Connection(web.RequestHandler):
    """One connection of the public port: counted against the caps while open."""

    def __init__(self, manager: web.Server, *, shared: _Shared, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._shared = shared
        self._source: str | None = None  # set while counted in shared.connections
        self._deadline: asyncio.TimerHandle | None = None
        self._busy = False  # a request's headers are complete and it is not answered yet
        self._head = 0  # bytes received while no request was busy
        self.served = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        source = guard.address_key(transport.get_extra_info("peername"))
        connections = self._shared.connections
        if not connections.admit(source):
            if connections.count >= connections.total:
                reason = f"the port holds its most connections ({connections.total})"
            else:
                reason = f"that source holds its most connections ({connections.per_address})"
            self._shared.mistake(
                "ingress.connection_refused", "refused a connection from %s: %s", source, reason
            )
            typing.cast(asyncio.Transport, transport).write(BUSY)
            transport.close()
            return
        self._source = source
        super().connection_made(transport)
        self._deadline = asyncio.get_running_loop().call_later(
            self._shared.limits.header_timeout, self._headers_late
        )

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._source is None:  # refused: aiohttp never saw this connection
            return
        self._shared.connections.release(self._source)
        self._source = None
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._source is None:
            return
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:  # a request's headers are complete (or refused)
            self._busy = True
            self._head = 0
            self._cancel_deadline()
        elif not self._busy:
            self._head += len(data)
            if self._head > MAX_REQUEST_HEAD_BYTES:
                self._shared.mistake(
                    "ingress.head_too_large",
                    "closed a connection from %s: over %d bytes without complete headers",
                    self._source,
                    MAX_REQUEST_HEAD_BYTES,
                )
                self._close_with(HEAD_TOO_LARGE)

    def request_started(self) -> None:
        """The handler has a request (a pipelined one may start without new bytes)."""
        self._busy = True
        self._cancel_deadline()

    def request_ended(self) -> None:
        """The handler answered a request: the next bytes are the next request's head."""
        self._busy = False
        self._head = 0
        self.served += 1

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A bare status for what aiohttp could not parse (or our own failure): no body, so
        nothing of the request is echoed; a warning without a traceback for the client's."""
        if status >= 500:
            log.error(
                "the public port failed a request",
                exc_info=exc,
                extra={"event": "ingress.failed", "status": status},
            )
        else:
            self._shared.mistake(
                "ingress.malformed",
                "answered %d to a malformed request from %s (%s)",
                status,
                self._source,
                type(exc).__name__ if exc is not None else "no detail",
            )
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had started before the error")
        response = web.Response(status=status)
        response.force_close()
        return response

    def _headers_late(self) -> None:
        self._deadline = None
        if self._busy or self.transport is None:
            return
        self._shared.mistake(
            "ingress.slow_headers",
            "closed a connection from %s: no complete request within %.0fs",
            self._source,
            self._shared.limits.header_timeout,
        )
        self._close_with(TIMED_OUT)

    def _close_with(self, answer: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(answer)
        self.force_close()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


class _Server(web.Server):
    def __init__(self, handler: Handler, *, shared: _Shared, **kwargs: Any) -> None:
        super().__init__(
            handler, request_factory=self._make_public_request, handler_cancellation=True
        )
        self._shared = shared
        self._connection_options = kwargs

    def __call__(self) -> web.RequestHandler:
        return _Connection(
            self,
            shared=self._shared,
            loop=asyncio.get_running_loop(),
            **self._connection_options,
        )

    def _make_public_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        return _Request(message, payload, protocol, writer, task, asyncio.get_running_loop())


class Listener:
    """The served public port."""

    def __init__(self, runner: web.ServerRunner, shared: _Shared) -> None:
        self._runner = runner
        self._shared = shared

    @property
    def port(self) -> int:
        for address in self._runner.addresses:
            return int(address[1])
        return 0

    @property
    def addresses(self) -> list[Any]:
        """The bound socket addresses (the exposure gate declares those sockets public)."""
        return list(self._runner.addresses)

    @property
    def limits(self) -> Limits:
        return self._shared.limits

    @property
    def open_connections(self) -> int:
        return self._shared.connections.count

    async def close(self) -> None:
        await self._runner.cleanup()


async def listen(handler: Handler, *, host: str, port: int, limits: Limits) -> Listener:
    """Serve `handler` on host:port within `limits`; OSError when the address cannot be bound."""
    shared = _Shared(
        limits, guard.Connections(limits.connections, limits.per_address), guard.Throttle()
    )

    async def serve(request: web.BaseRequest) -> web.StreamResponse:
        connection = request.protocol
        if isinstance(connection, _Connection):
            connection.request_started()
        try:
            response = await handler(request)
        finally:
            if isinstance(connection, _Connection):
                connection.request_ended()
        if isinstance(connection, _Connection) and connection.served >= limits.keepalive_requests:
            response.force_close()
        return response

    server = _Server(
        serve,
        shared=shared,
        keepalive_timeout=limits.keepalive_timeout,
        max_line_size=MAX_LINE_BYTES,
        max_field_size=MAX_FIELD_BYTES,
        max_headers=MAX_HEADERS,
        lingering_time=LINGER_SECONDS,
        access_log=None,
    )
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=guard.ACCEPT_BURST).start()
    except BaseException:
        await runner.cleanup()
        raise
    return Listener(runner, shared)
