"""Query wrappers of `sql/ingress.sql`: the webhook deliveries the ingress accepted."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from appliance.db import pool, sql

_Q = sql.load("ingress")


@contextlib.asynccontextmanager
async def transaction(executor: pool.Pool) -> AsyncIterator[pool.Connection]:
    """A pooled connection inside a transaction; a pool or server that is gone, at acquire,
    in the block or at commit, raises DatabaseUnavailableError."""
    with pool.translated():
        async with executor.acquire() as conn, conn.transaction():
            yield conn


async def record_delivery(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    source: str,
    delivery_id: str,
    task_id: int,
) -> None:
    """Remember the task a delivery enqueued; call it in the transaction that created the task."""
    with pool.translated():
        await conn.execute(_Q["record_delivery"], tenant_id, source, delivery_id, task_id)


async def find_delivery(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, source: str, delivery_id: str
) -> int | None:
    """The id of the task a delivery enqueued, or None."""
    with pool.translated():
        task_id: int | None = await conn.fetchval(
            _Q["find_delivery"], tenant_id, source, delivery_id
        )
    return task_id
