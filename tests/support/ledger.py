"""Rows of the cost ledger for tests, through the real insert."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from appliance.db import costs as dbcosts
from appliance.db import pool as dbpool

LATENCY_MS = 812.5


async def record_call(db: dbpool.Pool, tenant: str, task_id: int | None, cost: str) -> None:
    """One model call of agent `support` costing `cost` USD (uncached: twice that)."""
    await dbcosts.record_model_call(
        db,
        tenant_id=tenant,
        task_id=task_id,
        position=1 if task_id else None,
        agent="support",
        agent_version=1,
        model="claude-sonnet-4-6",
        request_id="req_1",
        started_at=dt.datetime.now(dt.UTC),
        latency_ms=LATENCY_MS,
        input_tokens=120,
        cache_creation_input_tokens=2000,
        cache_write_5m_tokens=2000,
        cache_write_1h_tokens=0,
        cache_read_input_tokens=0,
        output_tokens=40,
        cost_usd=Decimal(cost),
        uncached_cost_usd=Decimal(cost) * 2,
        cache_note=None,
    )
