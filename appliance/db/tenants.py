"""Query wrappers of `sql/tenants.sql`."""

from __future__ import annotations

from appliance import errors, models
from appliance.db import pool, sql

_Q = sql.load("tenants")


async def create_tenant(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, name: str, actor: str
) -> bool:
    """Create the tenant; False when it already existed."""
    try:
        with pool.translated():
            created = await conn.fetchval(_Q["create_tenant"], tenant_id, name, actor)
    except errors.ApplianceError as exc:
        if "tenants_tenant_id_check" in str(exc):
            raise errors.InputError(
                f"tenant id {tenant_id!r} must be lower-case letters, digits, '-' or '_' "
                "(at most 63, starting with a letter or digit)"
            ) from exc
        raise
    return bool(created)


async def list_tenants(conn: pool.Connection | pool.Pool) -> list[models.Tenant]:
    """Every tenant."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_tenants"])
    return [models.Tenant(**pool.record_dict(row)) for row in rows]
