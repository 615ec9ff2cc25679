"""Query wrappers of `sql/outbox.sql`: the relay's lock, the backlog, and delivery records.

Events are only ever inserted by the server-side functions of the migrations, in the same
transaction as the state change they announce; nothing here inserts or deletes one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from typing import NamedTuple

from appliance import models
from appliance.db import pool, sql

_Q = sql.load("outbox")

CHANNEL = "appliance_outbox"
_RELAY_LOCK_KEY = 0x6F7574626F786C6B  # "outboxlk"


class Backlog(NamedTuple):
    """The undelivered events: how many, how many failed at least once, the oldest one's age."""

    pending: int
    failing: int
    oldest_seconds: float | None


async def try_lock_relay(conn: pool.Connection) -> bool:
    """Take the relay lock for this session (a dedicated connection); False when held elsewhere."""
    with pool.translated():
        locked: bool = await conn.fetchval(_Q["try_lock_relay"], _RELAY_LOCK_KEY)
    return locked


async def unlock_relay(conn: pool.Connection) -> bool:
    """Release the relay lock; False when this session did not hold it."""
    with pool.translated():
        unlocked: bool = await conn.fetchval(_Q["unlock_relay"], _RELAY_LOCK_KEY)
    return unlocked


async def listen_events(conn: pool.Connection, callback: Callable[[], None]) -> None:
    """Call `callback` on every NOTIFY of the outbox channel received by this connection."""
    with pool.translated():
        await conn.add_listener(CHANNEL, lambda *_: callback())


async def fetch_pending_events(
    conn: pool.Connection | pool.Pool, *, limit: int
) -> list[models.OutboxEvent]:
    """Up to `limit` due events in event_seq order, never past a waiting event of their task."""
    with pool.translated():
        rows = await conn.fetch(_Q["fetch_pending_events"], limit)
    return [models.OutboxEvent(**pool.record_dict(row)) for row in rows]


async def mark_events_delivered(
    conn: pool.Connection | pool.Pool, event_seqs: Sequence[int]
) -> int:
    """Record that every sink accepted these events; returns how many were newly marked."""
    with pool.translated():
        count: int = await conn.fetchval(_Q["mark_events_delivered"], list(event_seqs))
    return count


async def mark_events_failed(
    conn: pool.Connection | pool.Pool,
    *,
    event_seqs: Sequence[int],
    last_errors: Sequence[str],
    delays: Sequence[float],
) -> None:
    """Record a failed delivery of each event, with its error and seconds until the next try."""
    with pool.translated():
        await conn.execute(
            _Q["mark_events_failed"], list(event_seqs), list(last_errors), list(delays)
        )


async def count_pending_events(conn: pool.Connection | pool.Pool) -> Backlog:
    """The undelivered backlog, for doctor and readiness."""
    with pool.translated():
        row = await conn.fetchrow(_Q["count_pending_events"])
    if row is None:
        return Backlog(0, 0, None)
    return Backlog(row["pending"], row["failing"], row["oldest_seconds"])


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """What an outbox event says changed (not its payload): the console's live stream."""

    seq: int
    type: str
    tenant_id: str
    task_id: int | None
    created_at: dt.datetime


async def list_events_after(
    conn: pool.Connection | pool.Pool, *, seq: int, limit: int
) -> list[Change]:
    """The events after `seq`, delivered or not, in order."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_events_after"], seq, limit)
    return [Change(**pool.record_dict(row)) for row in rows]


async def latest_event_seq(conn: pool.Connection | pool.Pool) -> int:
    """The newest event's sequence number (0 when there is none)."""
    with pool.translated():
        seq: int = await conn.fetchval(_Q["latest_event_seq"])
    return seq
