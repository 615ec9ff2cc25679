"""The outbox relay and its sinks: events leave Postgres at least once, in order per task.

Events are written by the server-side functions in the transaction of the state change they
announce. One relay ships them at a time, across all processes: it holds a session-level
advisory lock on a dedicated connection, and any other relay waits as a hot standby. An event
is marked delivered only after every sink accepted it, so a crash in between means the same
event (same id) is shipped again; sinks may drop duplicates by id. A refused event is kept,
with its error, and retried with backoff; the later events of its task wait behind it while
other tasks go on.

A stream is one task's events; events outside any task form one stream per tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from appliance import errors, models, settings
from appliance.db import outbox as dboutbox
from appliance.db import pool as dbpool
from appliance.engine import backoff

log = logging.getLogger(__name__)

Message = dict[str, Any]
Stream = tuple[str, int | None]

_RECONNECT_BASE_SECONDS = 0.5
_RECONNECT_MAX_SECONDS = 30.0
_SPLIT_PROBES = 3  # streams refused in a row, none accepted: the sink is down, not one event
_ERROR_CHARS = 500
_FLUSH_BATCHES = 10


# ---- sinks ---------------------------------------------------------------------------------


class Sink(Protocol):
    """Where events go. `deliver` returns when every message is accepted, and raises otherwise
    (the whole batch then counts as refused)."""

    name: str

    async def deliver(self, messages: Sequence[Message]) -> None: ...


def json_line(message: Message) -> str:
    """One message as one compact JSON line (keys sorted, so equal messages are equal lines)."""
    return json.dumps(message, separators=(",", ":"), sort_keys=True) + "\n"


class StdoutSink:
    """JSON lines on a text stream, flushed per batch: stdout by default (journald)."""

    name = "stdout"

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    async def deliver(self, messages: Sequence[Message]) -> None:
        text = "".join(json_line(message) for message in messages)
        await asyncio.to_thread(self._write, text)

    def _write(self, text: str) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        stream.write(text)
        stream.flush()


class FileSink:
    """JSON lines appended to a file, on disk (fsync) before the batch counts as accepted."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def deliver(self, messages: Sequence[Message]) -> None:
        text = "".join(json_line(message) for message in messages)
        await asyncio.to_thread(self._append, text)

    def _append(self, text: str) -> None:
        with self.path.open("a", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())


def build_sinks(config: settings.OutboxSettings) -> list[Sink]:
    """The configured sinks, in the configured order."""
    sinks: list[Sink] = []
    for name in config.sinks:
        if name == "stdout":
            sinks.append(StdoutSink())
        elif config.file_path is None:
            raise errors.ConfigError("the file sink needs outbox.file_path")
        else:
            sinks.append(FileSink(config.file_path))
    return sinks


# ---- the relay -----------------------------------------------------------------------------


class Relay:
    """Ships outbox events to the sinks while it holds the relay lock; stands by otherwise.

    `run()` works until `stop()` or cancellation; a stopped relay stays stopped. `ship_once()`
    takes the lock if it is free and ships one batch (for tests and one-off use); do not call
    it while `run()` is working.
    """

    def __init__(
        self,
        pool: dbpool.Pool,
        dsn: str,
        config: settings.OutboxSettings,
        sinks: Sequence[Sink],
        *,
        poll_seconds: float = 1.0,
        standby_seconds: float = 3.0,
        deliver_timeout_seconds: float = 30.0,
    ) -> None:
        self._pool = pool
        self._dsn = dsn
        self._config = config
        self._sinks = tuple(sinks)
        self._poll_seconds = poll_seconds
        self._standby_seconds = standby_seconds
        self._deliver_timeout = deliver_timeout_seconds
        self._conn: dbpool.Connection | None = None
        self._locked = False
        self._wake = asyncio.Event()
        self._stopping = False
        self._running = False
        self._stopped = asyncio.Event()
        self._lost = False
        self._standing_by = False

    @property
    def holds_lock(self) -> bool:
        """True while this relay is the one that ships."""
        return self._locked and self._conn is not None and not self._conn.is_closed()

    # ---- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Ship while holding the lock, stand by while another relay holds it, until stopped."""
        self._running = True
        self._stopped.clear()
        failures = 0
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    shipped = await self._round()
                except errors.ApplianceError as exc:
                    failures += 1
                    self._failed(exc)
                    await self._release()
                    await self._sleep(
                        backoff.delay(
                            failures, base=_RECONNECT_BASE_SECONDS, cap=_RECONNECT_MAX_SECONDS
                        )
                    )
                    continue
                if failures:
                    failures = 0
                    self._database_back()
                if shipped is None:
                    await self._sleep(self._standby_seconds)
                elif not shipped:
                    await self._sleep(self._poll_seconds)
            await self._flush()
        finally:
            await self._release()
            self._running = False
            self._stopped.set()

    async def stop(self) -> None:
        """Finish the batch in flight, ship what is due, release the lock, close its connection."""
        self._stopping = True
        self._wake.set()
        if self._running:
            await self._stopped.wait()
        else:
            await self._release()

    async def ship_once(self) -> int:
        """Ship one batch if this relay holds (or can take) the lock; return how many delivered."""
        if self._stopping or not await self._acquire():
            return 0
        _, delivered = await self._ship()
        return delivered

    async def _flush(self) -> None:
        """On stop, ship what is due now: a daemon that stops after its last task leaves no
        events of that task behind. Bounded, in case writers are still busy."""
        if not self.holds_lock:
            return
        try:
            for _ in range(_FLUSH_BATCHES):
                fetched, delivered = await self._ship()
                if fetched < self._config.batch_size or not delivered:
                    return
        except errors.ApplianceError as exc:
            self._failed(exc)

    # ---- the lock --------------------------------------------------------------------------

    async def _round(self) -> bool | None:
        """One turn of the loop: None on standby, True when a full batch should follow at once."""
        if not await self._acquire():
            return None
        fetched, delivered = await self._ship()
        return fetched >= self._config.batch_size and delivered > 0

    async def _acquire(self) -> bool:
        """Hold the lock (connecting first if needed); False when another relay holds it."""
        if self._conn is not None and self._conn.is_closed():
            self._conn, self._locked = None, False
            raise errors.DatabaseUnavailableError("the outbox relay's lock connection was lost")
        if self._locked:
            return True
        if self._conn is None:
            self._conn = await dbpool.connect(self._dsn)
            self._conn.add_termination_listener(lambda _: self._wake.set())
        if not await dboutbox.try_lock_relay(self._conn):
            if not self._standing_by:
                self._standing_by = True
                log.info(
                    "another outbox relay ships; standing by",
                    extra={"event": "outbox.standby"},
                )
            return False
        self._locked, self._standing_by = True, False
        await dboutbox.listen_events(self._conn, self._wake.set)
        log.info("outbox relay lock taken; shipping", extra={"event": "outbox.lock_taken"})
        return True

    async def _release(self) -> None:
        """Unlock and close the lock connection (closing alone would release the lock too)."""
        conn, locked = self._conn, self._locked
        self._conn, self._locked = None, False
        if conn is None or conn.is_closed():
            return
        try:
            if locked:
                with contextlib.suppress(errors.ApplianceError):
                    await dboutbox.unlock_relay(conn)
            await conn.close(timeout=2)
        except Exception:  # noqa: BLE001 - a connection that does not close cleanly is dropped
            conn.terminate()
        except BaseException:
            conn.terminate()
            raise
        if locked:
            log.info("outbox relay lock released", extra={"event": "outbox.lock_released"})

    def _failed(self, exc: errors.ApplianceError) -> None:
        """Log a failed round: losing Postgres once (not per retry), anything else each time."""
        if not isinstance(exc, errors.DatabaseUnavailableError):
            log.error("outbox relay failed: %s", exc, extra={"event": "outbox.failed"})
            return
        if self._lost:
            log.debug("%s", exc, extra={"event": "outbox.reconnect_failed"})
            return
        self._lost = True
        log.warning(
            "outbox relay lost Postgres, reconnecting: %s",
            exc,
            extra={"event": "outbox.database_lost"},
        )

    def _database_back(self) -> None:
        if self._lost:
            self._lost = False
            log.info("outbox relay reconnected", extra={"event": "outbox.reconnected"})

    async def _sleep(self, seconds: float) -> None:
        """Wait for a NOTIFY, a stop, a lost connection, or the timeout."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    # ---- shipping --------------------------------------------------------------------------

    async def _ship(self) -> tuple[int, int]:
        """Ship one batch to every sink and record the outcome; return (fetched, delivered)."""
        events = await dboutbox.fetch_pending_events(self._pool, limit=self._config.batch_size)
        if not events:
            return 0, 0
        refused: dict[Stream, str] = {}
        for sink in self._sinks:
            refused.update(await self._deliver(sink, events, refused))
        delivered = [e.event_seq for e in events if _stream(e) not in refused]
        if delivered:
            await dboutbox.mark_events_delivered(self._pool, delivered)
        if refused:
            await self._record_refused(events, refused)
        log.debug(
            "shipped %d event(s), %d refused",
            len(delivered),
            len(events) - len(delivered),
            extra={"event": "outbox.shipped", "count": len(delivered)},
        )
        return len(events), len(delivered)

    async def _deliver(
        self, sink: Sink, events: Sequence[models.OutboxEvent], refused: dict[Stream, str]
    ) -> dict[Stream, str]:
        """Offer a sink the batch; if it refuses, offer it stream by stream, so that one task's
        refused event holds back only that task. Returns the streams it refused, with why."""
        batch = [e for e in events if _stream(e) not in refused]
        if not batch:
            return {}
        error = await self._offer(sink, batch)
        if error is None:
            return {}
        streams: dict[Stream, list[models.OutboxEvent]] = {}
        for event in batch:
            streams.setdefault(_stream(event), []).append(event)
        failed: dict[Stream, str] = {}
        if len(streams) == 1:
            failed = dict.fromkeys(streams, error)
        else:
            accepted = False
            for key, group in streams.items():
                if not accepted and len(failed) >= _SPLIT_PROBES:
                    failed[key] = error
                    continue
                reason = await self._offer(sink, group)
                if reason is None:
                    accepted = True
                else:
                    failed[key] = reason
        log.warning(
            "sink %s refused %d of %d event(s): %s",
            sink.name,
            sum(len(streams[key]) for key in failed),
            len(batch),
            error,
            extra={"event": "outbox.delivery_failed", "sink": sink.name},
        )
        return failed

    async def _offer(self, sink: Sink, events: Sequence[models.OutboxEvent]) -> str | None:
        """Deliver to one sink; None when accepted, else a one-line reason."""
        try:
            async with asyncio.timeout(self._deliver_timeout):
                await sink.deliver([event.as_message() for event in events])
        except TimeoutError:
            return f"{sink.name}: no answer within {self._deliver_timeout:g}s"
        except Exception as exc:  # noqa: BLE001 - any refusal is recorded on the events and retried
            return _reason(sink, exc)
        return None

    async def _record_refused(
        self, events: Sequence[models.OutboxEvent], refused: dict[Stream, str]
    ) -> None:
        """attempts + 1, the reason, and one backoff per stream, so its events retry together."""
        attempts: dict[Stream, int] = {}
        for event in events:
            key = _stream(event)
            if key in refused:
                attempts[key] = max(attempts.get(key, 0), event.attempts + 1)
        delays = {
            key: backoff.delay(
                attempt,
                base=self._config.retry_base_seconds,
                cap=self._config.retry_max_seconds,
            )
            for key, attempt in attempts.items()
        }
        failed = [e for e in events if _stream(e) in refused]
        await dboutbox.mark_events_failed(
            self._pool,
            event_seqs=[e.event_seq for e in failed],
            last_errors=[refused[_stream(e)] for e in failed],
            delays=[delays[_stream(e)] for e in failed],
        )


def _stream(event: models.OutboxEvent) -> Stream:
    return event.tenant_id, event.task_id


def _reason(sink: Sink, exc: Exception) -> str:
    """A short, single-line error for `last_error` (never a traceback)."""
    text = " ".join(str(exc).split())
    reason = (
        f"{sink.name}: {type(exc).__name__}: {text}"
        if text
        else f"{sink.name}: {type(exc).__name__}"
    )
    return reason[:_ERROR_CHARS]
