"""Query wrappers of `sql/nodes.sql`: who holds each node name.

The hold is a session-level advisory lock, so `configure_node_session`, `hold_node`,
`beat_node` and `release_node` run on the holder's own connection, never on a pool.
"""

from __future__ import annotations

from appliance import models
from appliance.db import pool, sql

_Q = sql.load("nodes")

_NODE_LOCK_CLASS = 0x6E6F6465  # "node": the first key of every node name's advisory lock


def _node(row: pool.Record) -> models.Node:
    return models.Node(**pool.record_dict(row))


async def configure_node_session(
    conn: pool.Connection, *, idle_timeout_seconds: float, application_name: str
) -> None:
    """End this session when it stays silent for `idle_timeout_seconds` (PostgreSQL 14+)."""
    with pool.translated():
        await conn.fetchrow(
            _Q["configure_node_session"],
            str(max(1, round(idle_timeout_seconds * 1000))),
            application_name,
        )


async def hold_node(conn: pool.Connection, *, node: str, pid: int, host: str) -> int | None:
    """Take the node name for this session and record this process as its holder; the
    session's backend pid, or None when another session holds the name."""
    with pool.translated():
        backend: int | None = await conn.fetchval(
            _Q["hold_node"], node, pid, host, _NODE_LOCK_CLASS
        )
    return backend


async def beat_node(conn: pool.Connection, *, node: str) -> bool:
    """Record that the holder is alive; False when this session does not hold the name."""
    with pool.translated():
        row = await conn.fetchrow(_Q["beat_node"], node)
    return row is not None


async def release_node(conn: pool.Connection, *, node: str) -> bool:
    """Give the node name up; False when this session did not hold it."""
    with pool.translated():
        released: bool = await conn.fetchval(_Q["release_node"], node, _NODE_LOCK_CLASS)
    return released


async def get_node(conn: pool.Connection | pool.Pool, node: str) -> models.Node | None:
    """The holder (or last holder) of a node name, or None if it was never held."""
    with pool.translated():
        row = await conn.fetchrow(_Q["get_node"], node)
    return _node(row) if row else None


async def list_nodes(conn: pool.Connection | pool.Pool) -> list[models.Node]:
    """Every node name ever held, the most recently heard from first."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_nodes"])
    return [_node(row) for row in rows]
