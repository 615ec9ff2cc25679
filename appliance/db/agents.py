"""Query wrappers of `sql/agents.sql`: versioned agent definitions."""

from __future__ import annotations

import json

from appliance import errors, models
from appliance.db import pool, sql

_Q = sql.load("agents")


def _agent(row: pool.Record) -> models.AgentVersion:
    data = pool.record_dict(row)
    data["tools"] = tuple(data["tools"])
    return models.AgentVersion(**data)


async def insert_agent_version(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    name: str,
    persona: str,
    model: str,
    tools: list[str],
    max_tokens: int,
    max_turns: int,
    retrieval: dict[str, object],
    content_hash: str,
    created_by: str,
) -> tuple[int, bool]:
    """(version, created): a new version unless the newest one has this content already."""
    with pool.translated():
        row = await conn.fetchrow(
            _Q["insert_agent_version"],
            tenant_id,
            name,
            persona,
            model,
            json.dumps(tools),
            max_tokens,
            max_turns,
            json.dumps(retrieval, sort_keys=True),
            content_hash,
            created_by,
        )
    if row is None:
        raise errors.EngineError(f"agent {name}: no version recorded")
    return row["version"], row["created"]


async def get_agent(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, name: str, version: int | None = None
) -> models.AgentVersion:
    """A version of an agent (the newest without `version`), or NotFoundError."""
    with pool.translated():
        if version is None:
            row = await conn.fetchrow(_Q["get_latest_agent"], tenant_id, name)
        else:
            row = await conn.fetchrow(_Q["get_agent_version"], tenant_id, name, version)
    if row is None:
        which = f"version {version} of agent" if version is not None else "agent"
        raise errors.NotFoundError(
            f"no {which} {name!r} for tenant {tenant_id!r}; define it with `appliance agents apply`"
        )
    return _agent(row)


async def list_agents(
    conn: pool.Connection | pool.Pool, *, tenant_id: str
) -> list[models.AgentVersion]:
    """The newest version of each agent of a tenant."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_agents"], tenant_id)
    return [_agent(row) for row in rows]
