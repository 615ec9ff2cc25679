"""Query wrappers of `sql/exposure.sql`: the outbox events of the exposure recheck.

The one insert of an outbox event outside a server-side function: what it announces (a socket
opened or closed on the box) is not a row of ours, so there is no transaction to share.
"""

from __future__ import annotations

from typing import Any, Literal

from appliance.db import pool, sql

_Q = sql.load("exposure")

EventType = Literal["exposure.violation", "exposure.resolved"]


async def insert_exposure_event(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    event_type: EventType,
    payload: dict[str, Any],
) -> None:
    """One `exposure.*` outbox event, outside any task, in `tenant_id`'s stream."""
    with pool.translated():
        await conn.execute(_Q["insert_exposure_event"], tenant_id, event_type, payload)
