"""Query wrappers of `sql/health.sql`."""

from __future__ import annotations

from appliance.db import pool, sql

_Q = sql.load("health")


async def ping(conn: pool.Connection | pool.Pool) -> None:
    """Raise DatabaseUnavailableError unless Postgres answers."""
    with pool.translated():
        await conn.fetchval(_Q["ping"])


async def count_pending_work(conn: pool.Connection | pool.Pool) -> int:
    """Ready or running tasks."""
    with pool.translated():
        count: int = await conn.fetchval(_Q["count_pending_work"])
    return count
