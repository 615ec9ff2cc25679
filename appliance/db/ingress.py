"""Query wrappers of `sql/ingress.sql`: the webhook deliveries the ingress accepted.

Besides one row per delivery id, a delivery of a scheme that signs the body only (GitHub) has a
row for its body, keyed `BODY_KEY_PREFIX` + the body's SHA-256 in hex: a space can never be in
a sender's delivery id (1-255 visible ASCII characters), so the two never collide. Both rows
live as long as the task (ON DELETE CASCADE).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from appliance.db import pool, sql

_Q = sql.load("ingress")
BODY_KEY_PREFIX = "body sha256 "


def body_key(body_sha256: bytes) -> str:
    """The delivery_id under which a body's hash is recorded."""
    return BODY_KEY_PREFIX + body_sha256.hex()


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


async def record_body(
    conn: pool.Connection,
    *,
    tenant_id: str,
    source: str,
    body_sha256: bytes,
    task_id: int,
) -> bool:
    """Remember that a body (by its SHA-256) of the source enqueued the task; False when the
    body was recorded before (waiting for a transaction in flight that recorded it)."""
    with pool.translated():
        recorded: int | None = await conn.fetchval(
            _Q["record_body"], tenant_id, source, body_key(body_sha256), task_id
        )
    return recorded is not None


async def find_body(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, source: str, body_sha256: bytes
) -> int | None:
    """The id of the task that the first delivery of this body (its SHA-256) enqueued, or None."""
    return await find_delivery(
        conn, tenant_id=tenant_id, source=source, delivery_id=body_key(body_sha256)
    )
