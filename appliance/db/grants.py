"""Query wrappers of `sql/grants.sql`: console roles granted in the database.

The rows become `ConsoleGrant` here and nowhere else. The console reads them through its
services (`operations.Grants`), never from this module.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from appliance.db import pool, sql

_Q = sql.load("grants")


@dataclasses.dataclass(frozen=True, slots=True)
class ConsoleGrant:
    """A login's role in one tenant, and who granted it when."""

    login: str
    tenant_id: str
    role: str
    granted_by: str
    granted_at: dt.datetime


async def grant_console_role(
    conn: pool.Connection | pool.Pool, *, login: str, tenant_id: str, role: str, actor: str
) -> bool:
    """Give `login` the role in the tenant, audited; False when it held that role already."""
    with pool.translated():
        changed = await conn.fetchval(_Q["grant_console_role"], login, tenant_id, role, actor)
    return bool(changed)


async def list_console_grants(conn: pool.Connection | pool.Pool, login: str) -> list[ConsoleGrant]:
    """The roles granted to `login`, by tenant."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_console_grants"], login)
    return [ConsoleGrant(**pool.record_dict(row)) for row in rows]


async def list_all_console_grants(conn: pool.Connection | pool.Pool) -> list[ConsoleGrant]:
    """Every role granted in the database."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_all_console_grants"])
    return [ConsoleGrant(**pool.record_dict(row)) for row in rows]
