"""The tool actions a daemon builds (`daemon._tool_actions`), for tests that run agent tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance import leases, settings, vault
from appliance.agents import actions
from appliance.db import pool as dbpool
from appliance.isolation import supervisor


def tool_actions(
    db: dbpool.Pool,
    *,
    opened: vault.Vault | None = None,
    hidden_paths: tuple[Path, ...] = (),
    approvals: dict[str, Any] | None = None,
    **isolation: Any,
) -> actions.Actions:
    """Policy, approvals, audit and one confined process per call, as the daemon wires them."""
    config = settings.IsolationSettings.model_validate(isolation)
    grants = leases.Leases(db, opened, ttl_seconds=config.lease_ttl_seconds)
    return actions.Actions(
        db,
        supervisor.Supervisor(db, grants, config, hidden_paths=hidden_paths),
        settings.ApprovalSettings.model_validate(approvals or {}),
    )
