"""Query wrappers of `sql/audit.sql`: reading and verifying the hash-chained audit log.

Entries are only ever written by the server-side functions of the migrations (in the same
transaction as the state change they record); nothing here writes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from appliance import models
from appliance.db import pool, sql

_Q = sql.load("audit")


async def list_chain(conn: pool.Connection | pool.Pool, chain: str) -> list[models.AuditEntry]:
    """One chain's entries in order."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_chain"], chain)
    return [models.AuditEntry(**pool.record_dict(row)) for row in rows]


async def find_chain_breaks(
    conn: pool.Connection | pool.Pool, *, limit: int = 20
) -> list[models.ChainBreak]:
    """The entries that do not verify, in chain and sequence order."""
    with pool.translated():
        rows = await conn.fetch(_Q["find_chain_breaks"], limit)
    return [models.ChainBreak(**pool.record_dict(row)) for row in rows]


async def count_audit_entries(conn: pool.Connection | pool.Pool) -> tuple[int, int]:
    """(entries, chains)."""
    with pool.translated():
        row = await conn.fetchrow(_Q["count_audit_entries"])
    return (row["entries"], row["chains"]) if row else (0, 0)


async def search_audit_entries(
    conn: pool.Connection | pool.Pool,
    *,
    tenants: Sequence[str],
    task_id: int | None,
    actor: str | None,
    action: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    limit: int,
) -> list[models.AuditEntry]:
    """Entries of these tenants, newest first, narrowed by each argument that is not None."""
    with pool.translated():
        rows = await conn.fetch(
            _Q["search_audit_entries"], list(tenants), task_id, actor, action, since, until, limit
        )
    return [models.AuditEntry(**pool.record_dict(row)) for row in rows]


async def find_tenant_chain_breaks(
    conn: pool.Connection | pool.Pool, *, tenants: Sequence[str], limit: int = 20
) -> list[models.ChainBreak]:
    """The entries of these tenants' chains that do not verify, in chain and sequence order."""
    with pool.translated():
        rows = await conn.fetch(_Q["find_tenant_chain_breaks"], limit, list(tenants))
    return [models.ChainBreak(**pool.record_dict(row)) for row in rows]


async def find_breaks_in_chain(
    conn: pool.Connection | pool.Pool, chain: str
) -> list[models.ChainBreak]:
    """The entries of one chain that do not verify, in sequence order."""
    with pool.translated():
        rows = await conn.fetch(_Q["find_breaks_in_chain"], chain)
    return [models.ChainBreak(**pool.record_dict(row)) for row in rows]
