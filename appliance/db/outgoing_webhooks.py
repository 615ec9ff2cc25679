"""Query wrappers of `sql/outgoing_webhooks.sql`: each webhook endpoint's queue of deliveries."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from appliance import models
from appliance.db import pool, sql

_Q = sql.load("outgoing_webhooks")


@dataclasses.dataclass(frozen=True, slots=True)
class EndpointBacklog:
    """An endpoint's deliveries not made yet: how many, how many failed, the oldest one's age,
    the newest error."""

    endpoint: str
    pending: int
    failing: int
    oldest_seconds: float
    last_error: str | None


async def enqueue_deliveries(
    conn: pool.Connection | pool.Pool, *, endpoints: Sequence[str], event_seqs: Sequence[int]
) -> None:
    """One delivery of each event to its endpoint (pairs); one already there stays as it is."""
    with pool.translated():
        await conn.execute(_Q["enqueue_deliveries"], list(endpoints), list(event_seqs))


async def fetch_due_deliveries(
    conn: pool.Connection | pool.Pool, *, endpoint: str, limit: int
) -> list[models.OutboxEvent]:
    """Up to `limit` due deliveries of the endpoint, as their events (`attempts`: the
    delivery's), in event order, never past a waiting delivery of their task."""
    with pool.translated():
        rows = await conn.fetch(_Q["fetch_due_deliveries"], endpoint, limit)
    return [models.OutboxEvent(**pool.record_dict(row)) for row in rows]


async def mark_deliveries_done(
    conn: pool.Connection | pool.Pool, *, endpoint: str, event_seqs: Sequence[int]
) -> None:
    """The endpoint accepted these events."""
    with pool.translated():
        await conn.execute(_Q["mark_deliveries_done"], endpoint, list(event_seqs))


async def mark_deliveries_failed(
    conn: pool.Connection | pool.Pool,
    *,
    endpoint: str,
    event_seqs: Sequence[int],
    last_errors: Sequence[str],
    delays: Sequence[float],
) -> None:
    """A failed delivery of each event, with its error and seconds until the next try."""
    with pool.translated():
        await conn.execute(
            _Q["mark_deliveries_failed"],
            endpoint,
            list(event_seqs),
            list(last_errors),
            list(delays),
        )


async def count_webhook_backlog(conn: pool.Connection | pool.Pool) -> list[EndpointBacklog]:
    """The backlog of every endpoint that has one (doctor)."""
    with pool.translated():
        rows = await conn.fetch(_Q["count_webhook_backlog"])
    return [EndpointBacklog(**pool.record_dict(row)) for row in rows]
