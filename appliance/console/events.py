"""The live stream: Server-Sent Events at /api/v1/events, fed by the outbox.

One poller per app reads the outbox events after the last one it saw (every `POLL_SECONDS`,
only while someone listens) and hands each batch to every listener, filtered by the tenants
the listener sees: a batch is one write, so a burst of changes is one wake-up for a page
(debounced by the poll). Each event carries its outbox sequence number as its SSE `id`; a
client that reconnects with `Last-Event-ID` (browsers do) first gets what it missed, up to
`REPLAY_LIMIT` events, then the live stream. Events say what changed (type, tenant, task),
never the payload: a page asks the API for what it shows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from aiohttp import web

from appliance import errors
from appliance.console import identity, services

log = logging.getLogger(__name__)

PATH = "/api/v1/events"
POLL_SECONDS = 0.25
BATCH = 500
REPLAY_LIMIT = 1000
KEEPALIVE_SECONDS = 15.0
QUEUE_LIMIT = 100  # batches a slow listener may fall behind before it is dropped

ServicesOf = Callable[[web.Request], services.Services]
PersonOf = Callable[[web.Request], identity.Person]


class _Listener:
    def __init__(self, tenants: Sequence[str]) -> None:
        self.tenants = frozenset(tenants)
        self.batches: asyncio.Queue[list[services.Event] | None] = asyncio.Queue(QUEUE_LIMIT)

    def end(self) -> None:
        """End its stream (the app shuts down, or it fell too far behind): what it has not
        read yet is dropped for the end mark."""
        while True:
            try:
                self.batches.put_nowait(None)
            except asyncio.QueueFull:
                self.batches.get_nowait()
            else:
                return

    def offer(self, batch: Sequence[services.Event]) -> None:
        mine = [event for event in batch if event.tenant_id in self.tenants]
        if not mine:
            return
        try:
            self.batches.put_nowait(mine)
        except asyncio.QueueFull:  # too slow: the browser reconnects and replays what it missed
            self.end()


class Hub:
    """The one outbox poller of an app, and the listeners it feeds."""

    def __init__(self) -> None:
        self._listeners: set[_Listener] = set()
        self._seq: int | None = None
        self._poller: asyncio.Task[None] | None = None
        self._events: services.Events | None = None

    async def join(self, events: services.Events, tenants: Sequence[str]) -> tuple[_Listener, int]:
        """A new listener, and the sequence number from which the poller feeds it."""
        self._events = events
        seq = self._seq
        idle = seq is None or self._poller is None or self._poller.done()
        if seq is None or idle:  # nobody listened meanwhile: start from now
            seq = self._seq = await events.latest()
        listener = _Listener(tenants)
        self._listeners.add(listener)
        if idle:
            self._poller = asyncio.create_task(self._poll(), name="console.events")
        return listener, seq

    def leave(self, listener: _Listener) -> None:
        self._listeners.discard(listener)

    async def _poll(self) -> None:
        while self._listeners and self._events is not None and self._seq is not None:
            try:
                batch = await self._events.after(self._seq, limit=BATCH)
            except errors.ApplianceError as exc:  # Postgres away: readiness says so; try again
                log.debug("events not read: %s", exc, extra={"event": "console.events_unread"})
                batch = []
            if batch:
                self._seq = batch[-1].seq
                for listener in list(self._listeners):
                    listener.offer(batch)
            if len(batch) < BATCH:
                await asyncio.sleep(POLL_SECONDS)

    async def close(self) -> None:
        """Every stream ends (so the app's shutdown waits for none), and the poller stops."""
        for listener in list(self._listeners):
            listener.end()
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.wait([self._poller])


HUB = web.AppKey("events_hub", Hub)


def add_routes(app: web.Application, services_of: ServicesOf, person_of: PersonOf) -> None:
    app[HUB] = Hub()

    async def close_hub(app: web.Application) -> None:
        await app[HUB].close()

    app.on_shutdown.append(close_hub)

    async def stream(request: web.Request) -> web.StreamResponse:
        return await _stream(request, services_of(request), person_of(request))

    app.router.add_get(PATH, stream)


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise errors.InputError("Last-Event-ID: not an event id")
    return int(raw)


async def _stream(
    request: web.Request, found: services.Services, person: identity.Person
) -> web.StreamResponse:
    last = _last_event_id(request)
    tenants = person.visible(await found.workforce.tenants())
    hub = request.app[HUB]
    listener, live_from = await hub.join(found.events, tenants)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
    )
    try:
        await response.prepare(request)
        await response.write(b"retry: 1000\n\n")
        if last is not None and last < live_from:
            missed = await found.events.after(last, limit=REPLAY_LIMIT)
            await _send(
                response, [e for e in missed if e.seq <= live_from and e.tenant_id in tenants]
            )
        await _follow(response, listener)
    except ConnectionResetError:  # the client went away
        pass
    finally:
        hub.leave(listener)
    return response


async def _follow(response: web.StreamResponse, listener: _Listener) -> None:
    """Write each batch as it comes, a keep-alive comment when none came for a while."""
    while True:
        try:
            async with asyncio.timeout(KEEPALIVE_SECONDS):
                batch = await listener.batches.get()
        except TimeoutError:
            await response.write(b": keep-alive\n\n")
            continue
        if batch is None:  # it fell too far behind: the client reconnects and replays
            return
        await _send(response, batch)


async def _send(response: web.StreamResponse, batch: Sequence[services.Event]) -> None:
    if not batch:
        return
    text = "".join(
        f"id: {event.seq}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n"
        for event in batch
    )
    await response.write(text.encode())
