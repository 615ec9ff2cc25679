"""Query wrappers of `sql/policies.sql`: versioned policy documents, one series per tenant."""

from __future__ import annotations

import json

from appliance import errors, policy
from appliance.db import pool, sql

_Q = sql.load("policies")


def _policy(row: pool.Record) -> policy.Policy:
    data = pool.record_dict(row)
    data["document"] = policy.Document.model_validate(data["document"])
    return policy.Policy(**data)


async def apply_policy(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, document_text: str, actor: str
) -> tuple[int, bool]:
    """(version, created): a new, audited version unless the newest one has this content.

    An invalid document raises InputError naming the rule index, key and reason.
    """
    document = policy.parse(document_text)
    with pool.translated():
        row = await conn.fetchrow(
            _Q["insert_policy_version"],
            tenant_id,
            json.dumps(document.canonical(), sort_keys=True),
            document.content_hash(),
            actor,
            len(document.rules),
        )
    if row is None:
        raise errors.EngineError(f"policy of tenant {tenant_id!r}: no version recorded")
    return row["version"], row["created"]


async def get_policy(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, version: int | None = None
) -> policy.Policy:
    """A version of a tenant's policy (the newest without `version`), or NotFoundError."""
    with pool.translated():
        if version is None:
            row = await conn.fetchrow(_Q["get_latest_policy"], tenant_id)
        else:
            row = await conn.fetchrow(_Q["get_policy_version"], tenant_id, version)
    if row is None:
        which = f"version {version} of the policy" if version is not None else "policy"
        raise errors.NotFoundError(f"no {which} for tenant {tenant_id!r}")
    return _policy(row)


def diff_policies(a: policy.Policy, b: policy.Policy) -> str:
    """A readable unified diff of two versions' canonical documents."""
    return policy.diff_policies(a, b)
