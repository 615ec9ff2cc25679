"""The outbox relay against the real Postgres: order, at-least-once, retries, the single shipper."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import pytest_asyncio

from appliance import outbox, settings
from appliance.db import outbox as dboutbox
from appliance.db import pool as dbpool
from appliance.db import sql
from appliance.engine import context, registry, submission

pytestmark = pytest.mark.timeout(30)

Message = dict[str, Any]

workflows = registry.Registry()


@workflows.workflow("noop")
async def noop(ctx: context.TaskContext, task_input: Any) -> Any:
    """A workflow that returns its input; only its submission matters here."""
    return task_input


def outbox_config(**overrides: Any) -> settings.OutboxSettings:
    """Outbox settings for tests: refused events are due again at once unless told otherwise."""
    values: dict[str, Any] = {"retry_base_seconds": 0.0, "retry_max_seconds": 0.0}
    values.update(overrides)
    return settings.OutboxSettings(**values)


class RecordingSink:
    """Keeps every batch it accepts; refuses a batch holding any message `refuse` picks."""

    def __init__(self, refuse: Callable[[Message], bool] | None = None) -> None:
        self.name = "recording"
        self.refuse = refuse
        self.offers = 0
        self.batches: list[list[Message]] = []

    @property
    def messages(self) -> list[Message]:
        return [message for batch in self.batches for message in batch]

    @property
    def ids(self) -> list[str]:
        return [message["id"] for message in self.messages]

    async def deliver(self, messages: Sequence[Message]) -> None:
        self.offers += 1
        if self.refuse is not None and any(self.refuse(message) for message in messages):
            raise RuntimeError("sink down\n  with a second line")
        self.batches.append(list(messages))


class DedupingSink:
    """A sink that drops duplicates by event id, as a real consumer may."""

    def __init__(self) -> None:
        self.name = "deduping"
        self.offered: list[str] = []
        self.accepted: list[Message] = []

    async def deliver(self, messages: Sequence[Message]) -> None:
        seen = {message["id"] for message in self.accepted}
        for message in messages:
            self.offered.append(message["id"])
            if message["id"] not in seen:
                seen.add(message["id"])
                self.accepted.append(message)


class StallingSink:
    """Hands the batch to `inner`, then never returns: the relay dies between ship and mark."""

    def __init__(self, inner: DedupingSink) -> None:
        self.name = "stalling"
        self.inner = inner
        self.shipped = asyncio.Event()

    async def deliver(self, messages: Sequence[Message]) -> None:
        await self.inner.deliver(messages)
        self.shipped.set()
        await asyncio.Event().wait()


class Relays:
    """Makes relays on the test database and stops them (and their run tasks) afterwards."""

    def __init__(self, pool: dbpool.Pool, dsn: str) -> None:
        self.pool = pool
        self.dsn = dsn
        self.made: list[outbox.Relay] = []
        self.tasks: list[asyncio.Task[None]] = []

    def make(
        self,
        sinks: Sequence[outbox.Sink],
        *,
        config: settings.OutboxSettings | None = None,
        dsn: str | None = None,
        **options: float,
    ) -> outbox.Relay:
        relay = outbox.Relay(
            self.pool, dsn or self.dsn, config or outbox_config(), sinks, **options
        )
        self.made.append(relay)
        return relay

    def start(self, relay: outbox.Relay) -> asyncio.Task[None]:
        task = asyncio.create_task(relay.run())
        self.tasks.append(task)
        return task

    async def close(self) -> None:
        for relay in self.made:
            await relay.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest_asyncio.fixture(loop_scope="session")
async def relays(db: dbpool.Pool, database_dsn: str) -> AsyncIterator[Relays]:
    """A relay factory whose relays are stopped at the end of the test."""
    made = Relays(db, database_dsn)
    try:
        yield made
    finally:
        await made.close()


async def submit(db: dbpool.Pool, tenant_id: str = "acme") -> int:
    """A task through the real submission path; it writes one `task.submitted` event."""
    submitted = await submission.submit(
        db,
        workflows,
        settings.EngineSettings(),
        tenant_id=tenant_id,
        workflow="noop",
        task_input={},
        actor="test",
    )
    return submitted.task_id


async def insert_event(
    db: dbpool.Pool, *, tenant_id: str, task_id: int | None, wait_seconds: float = 0.0
) -> int:
    """An event row written directly, optionally not due before `wait_seconds`."""
    seq: int = await db.fetchval(
        "INSERT INTO appliance.outbox_events (tenant_id, task_id, type, payload, next_attempt_at)"
        " VALUES ($1, $2, 'test.event', $3::jsonb, now() + make_interval(secs => $4))"
        " RETURNING event_seq",
        tenant_id,
        task_id,
        {"note": "direct"},
        wait_seconds,
    )
    return seq


async def event_rows(db: dbpool.Pool) -> list[dict[str, Any]]:
    """Every event row in event_seq order."""
    rows = await db.fetch(
        "SELECT event_seq, event_id::text AS event_id, task_id, delivered_at, attempts,"
        " last_error, next_attempt_at - now() AS wait FROM appliance.outbox_events"
        " ORDER BY event_seq"
    )
    return [dbpool.record_dict(row) for row in rows]


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until `condition()` holds (polled), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.01)


def seqs(messages: Sequence[Message]) -> list[int]:
    return [message["seq"] for message in messages]


class TestShipping:
    async def test_events_arrive_once_in_event_seq_order(
        self, db: dbpool.Pool, relays: Relays
    ) -> None:
        """A batch reaches the sink in event_seq order with the rows' ids, and only once."""
        first = await submit(db, "acme")
        await submit(db, "globex")
        await insert_event(db, tenant_id="acme", task_id=first)
        await submit(db, "default")
        sink = RecordingSink()
        relay = relays.make([sink])

        assert await relay.ship_once() == 4
        assert await relay.ship_once() == 0

        rows = await event_rows(db)
        assert seqs(sink.messages) == [row["event_seq"] for row in rows]
        assert sink.ids == [row["event_id"] for row in rows]
        assert sink.messages[0]["type"] == "task.submitted"
        assert sink.messages[0]["payload"]["task_id"] == first

    async def test_delivered_events_are_marked_in_postgres(
        self, db: dbpool.Pool, relays: Relays
    ) -> None:
        """Shipped events carry delivered_at and one attempt; the backlog is empty."""
        await submit(db)
        await submit(db)
        await relays.make([RecordingSink()]).ship_once()

        rows = await event_rows(db)
        assert all(row["delivered_at"] is not None for row in rows)
        assert [row["attempts"] for row in rows] == [1, 1]
        assert await dboutbox.count_pending_events(db) == (0, 0, None)

    async def test_full_batches_follow_without_waiting_for_the_poll(
        self, db: dbpool.Pool, relays: Relays
    ) -> None:
        """While batches come back full, the relay ships the next one at once."""
        for _ in range(5):
            await submit(db)
        sink = RecordingSink()
        relays.start(relays.make([sink], config=outbox_config(batch_size=2), poll_seconds=60))

        await eventually(lambda: len(sink.messages) == 5)
        assert [len(batch) for batch in sink.batches] == [2, 2, 1]

    async def test_running_relay_ships_events_written_while_it_idles(
        self, db: dbpool.Pool, relays: Relays
    ) -> None:
        """An event written after the relay went idle is shipped by the next wake-up."""
        sink = RecordingSink()
        relay = relays.make([sink], poll_seconds=0.05)
        relays.start(relay)
        await eventually(lambda: relay.holds_lock)

        await submit(db)

        await eventually(lambda: len(sink.messages) == 1)

    async def test_stop_ships_what_is_due_before_releasing_the_lock(
        self, db: dbpool.Pool, relays: Relays
    ) -> None:
        """Events written since the last wake-up are shipped by stop(), not left behind."""
        await submit(db)
        sink = RecordingSink()
        relay = relays.make([sink], poll_seconds=60)
        relays.start(relay)
        await eventually(lambda: len(sink.messages) == 1)
        await submit(db)

        await relay.stop()

        assert seqs(sink.messages) == [1, 2]
        assert not relay.holds_lock


class TestRefusedDelivery:
    async def test_refused_batch_is_recorded_not_delivered(
        self, db: dbpool.Pool, relays: Relays
    ) -> None:
        """A refusal leaves the events pending with attempts, a one-line error and a retry time."""
        await submit(db)
        await submit(db)
        sink = RecordingSink(refuse=lambda _: True)
        relay = relays.make(
            [sink], config=outbox_config(retry_base_seconds=60, retry_max_seconds=300)
        )

        assert await relay.ship_once() == 0

        for row in await event_rows(db):
            assert row["delivered_at"] is None
            assert row["attempts"] == 1
            assert row["last_error"] == "recording: RuntimeError: sink down with a second line"
            assert 29 < row["wait"].total_seconds() <= 60
        assert (await dboutbox.count_pending_events(db))[:2] == (2, 2)

    async def test_refused_task_holds_back_its_later_events(
        self, db: dbpool.Pool, relays: Relays
    ) -> None:
        """While one task's events are refused, its later events wait and other tasks ship."""
        held = await submit(db, "acme")
        other = await submit(db, "globex")
        await insert_event(db, tenant_id="acme", task_id=held)
        await insert_event(db, tenant_id="globex", task_id=other)
        sink = RecordingSink(refuse=lambda message: message["task_id"] == held)
        relay = relays.make([sink])

        assert await relay.ship_once() == 2
        later = await insert_event(db, tenant_id="acme", task_id=held)
        await insert_event(db, tenant_id="globex", task_id=other)
        assert await relay.ship_once() == 1

        assert {message["task_id"] for message in sink.messages} == {other}
        undelivered = [row["event_seq"] for row in await event_rows(db) if not row["delivered_at"]]
        assert undelivered == [1, 3, later]

    async def test_recovered_sink_receives_held_events_in_order(
        self, db: dbpool.Pool, relays: Relays
    ) -> None:
        """After the sink recovers, a held-back task's events all arrive, in order."""
        held = await submit(db, "acme")
        await insert_event(db, tenant_id="acme", task_id=held)
        sink = RecordingSink(refuse=lambda message: message["task_id"] == held)
        relay = relays.make([sink])
        await relay.ship_once()
        await insert_event(db, tenant_id="acme", task_id=held)
        await relay.ship_once()

        sink.refuse = None
        assert await relay.ship_once() == 3

        assert seqs(sink.messages) == [1, 2, 3]
        assert [row["attempts"] for row in await event_rows(db)] == [3, 3, 2]

    async def test_event_waiting_to_retry_holds_back_its_task(
        self, db: dbpool.Pool, relays: Relays
    ) -> None:
        """A task's due event is not shipped past its earlier event that waits for a retry."""
        task = await submit(db, "acme")
        await db.execute(
            "UPDATE appliance.outbox_events SET next_attempt_at = now() + interval '1 hour'"
        )
        await insert_event(db, tenant_id="acme", task_id=task)
        other = await submit(db, "globex")
        sink = RecordingSink()

        assert await relays.make([sink]).ship_once() == 1

        assert [message["task_id"] for message in sink.messages] == [other]

    async def test_events_outside_tasks_are_ordered_per_tenant(
        self, db: dbpool.Pool, relays: Relays
    ) -> None:
        """Events without a task form one stream per tenant: held back there, not elsewhere."""
        await insert_event(db, tenant_id="acme", task_id=None, wait_seconds=3600)
        await insert_event(db, tenant_id="acme", task_id=None)
        shipped = await insert_event(db, tenant_id="globex", task_id=None)
        sink = RecordingSink()

        assert await relays.make([sink]).ship_once() == 1

        assert seqs(sink.messages) == [shipped]

    async def test_sink_refusing_everything_is_not_offered_every_task(
        self, db: dbpool.Pool, relays: Relays
    ) -> None:
        """A sink that refuses the batch and its first streams one by one counts as down."""
        for _ in range(6):
            await submit(db)
        sink = RecordingSink(refuse=lambda _: True)

        assert await relays.make([sink]).ship_once() == 0

        assert sink.offers == 4
        rows = await event_rows(db)
        assert [row["attempts"] for row in rows] == [1] * 6
        assert all(row["last_error"] for row in rows)

    async def test_every_sink_must_accept(self, db: dbpool.Pool, relays: Relays) -> None:
        """An event one sink accepted and another refused stays pending for both."""
        await submit(db)
        accepting = RecordingSink()
        refusing = RecordingSink(refuse=lambda _: True)

        assert await relays.make([accepting, refusing]).ship_once() == 0

        assert len(accepting.messages) == 1
        assert (await event_rows(db))[0]["delivered_at"] is None

    async def test_sink_that_never_answers_counts_as_refused(
        self, db: dbpool.Pool, relays: Relays
    ) -> None:
        """A sink that does not answer within the delivery timeout is recorded as refusing."""
        await submit(db)
        stalled = StallingSink(DedupingSink())
        relay = relays.make([stalled], deliver_timeout_seconds=0.05)

        assert await relay.ship_once() == 0

        row = (await event_rows(db))[0]
        assert row["last_error"] == "stalling: no answer within 0.05s"


class TestAtLeastOnce:
    async def test_relay_killed_before_marking_redelivers_same_ids(
        self, db: dbpool.Pool, relays: Relays
    ) -> None:
        """A relay killed between shipping and marking: the next one ships the same ids again."""
        for tenant in ("acme", "globex", "acme"):
            await submit(db, tenant)
        deduping = DedupingSink()
        stalling = StallingSink(deduping)
        crashed = relays.start(relays.make([stalling]))
        await asyncio.wait_for(stalling.shipped.wait(), timeout=5)
        crashed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await crashed
        assert all(row["delivered_at"] is None for row in await event_rows(db))

        assert await relays.make([deduping]).ship_once() == 3

        ids = [row["event_id"] for row in await event_rows(db)]
        assert deduping.offered == ids + ids
        assert [message["id"] for message in deduping.accepted] == ids


class TestSingleRelay:
    async def test_second_relay_does_not_ship_while_first_holds_lock(
        self, db: dbpool.Pool, relays: Relays
    ) -> None:
        """Only the lock holder ships; the other relay ships nothing and holds nothing."""
        await submit(db)
        first, second = RecordingSink(), RecordingSink()
        holder, standby = relays.make([first]), relays.make([second])
        assert await holder.ship_once() == 1

        await submit(db)

        assert await standby.ship_once() == 0
        assert holder.holds_lock
        assert not standby.holds_lock
        assert second.messages == []

    async def test_standby_takes_over_when_the_holder_stops(
        self, db: dbpool.Pool, relays: Relays, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A standby relay polling for the lock ships once the holder stops."""
        caplog.set_level(logging.INFO, logger="appliance.outbox")
        holder = relays.make([RecordingSink()])
        await holder.ship_once()
        sink = RecordingSink()
        standby = relays.make([sink], standby_seconds=0.05)
        relays.start(standby)
        await eventually(lambda: _logged(caplog, "outbox.standby") == 1)
        await submit(db)

        await holder.stop()

        await eventually(lambda: len(sink.messages) == 1)
        assert standby.holds_lock

    async def test_lost_lock_connection_is_reconnected(
        self, db: dbpool.Pool, relays: Relays, caplog: pytest.LogCaptureFixture
    ) -> None:
        """When the lock connection dies, the relay logs it once, reconnects and ships again."""
        caplog.set_level(logging.INFO, logger="appliance.outbox")
        sink = RecordingSink()
        relay = relays.make([sink], poll_seconds=0.05)
        relays.start(relay)
        await eventually(lambda: relay.holds_lock)

        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND granted AND database = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())"
        )
        await submit(db)

        await eventually(lambda: _logged(caplog, "outbox.reconnected") == 1)
        assert len(sink.messages) == 1
        assert _logged(caplog, "outbox.database_lost") == 1

    async def test_unreachable_database_is_logged_once(
        self, db: dbpool.Pool, relays: Relays, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Retries against a database that does not answer log the loss once, not per retry."""
        caplog.set_level(logging.DEBUG, logger="appliance.outbox")
        relay = relays.make([RecordingSink()], dsn="postgresql://appliance@127.0.0.1:1/appliance")
        relays.start(relay)

        await eventually(lambda: _logged(caplog, "outbox.reconnect_failed") >= 2)

        assert _logged(caplog, "outbox.database_lost") == 1


class TestQueries:
    async def test_every_outbox_query_prepares(self, db: dbpool.Pool) -> None:
        """Each named statement of sql/outbox.sql is valid against the migrated schema."""
        async with db.acquire() as conn:
            for statement in sql.load("outbox").values():
                await conn.prepare(statement)

    async def test_backlog_reports_the_oldest_pending_event(self, db: dbpool.Pool) -> None:
        """The backlog counts undelivered events and the age of the oldest one."""
        await insert_event(db, tenant_id="acme", task_id=None)
        await db.execute(
            "UPDATE appliance.outbox_events SET created_at = now() - interval '90 seconds'"
        )

        backlog = await dboutbox.count_pending_events(db)

        assert backlog.pending == 1
        assert backlog.failing == 0
        assert backlog.oldest_seconds is not None
        assert 89 < backlog.oldest_seconds < 120


def _logged(caplog: pytest.LogCaptureFixture, event: str) -> int:
    return sum(1 for record in caplog.records if getattr(record, "event", None) == event)
