"""Query wrappers of `sql/tenants.sql`."""

from __future__ import annotations

from appliance import models
from appliance.db import pool, sql

_Q = sql.load("tenants")


async def create_tenant(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, name: str, actor: str
) -> bool:
    """Create the tenant; False when it already existed."""
    with pool.translated():
        created = await conn.fetchval(_Q["create_tenant"], tenant_id, name, actor)
    return bool(created)


async def list_tenants(conn: pool.Connection | pool.Pool) -> list[models.Tenant]:
    """Every tenant."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_tenants"])
    return [models.Tenant(**pool.record_dict(row)) for row in rows]


async def get_tenant(conn: pool.Connection | pool.Pool, tenant_id: str) -> models.Tenant | None:
    """The tenant, or None when there is none with that id."""
    with pool.translated():
        row = await conn.fetchrow(_Q["get_tenant"], tenant_id)
    return models.Tenant(**pool.record_dict(row)) if row is not None else None
