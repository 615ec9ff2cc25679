"""Submitting tasks: validation against the registry, idempotency, concurrency keys, and the
workers woken once the task is committed (wakeups.py)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from appliance import errors, models, settings
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import context, registry, wakeups


async def submit(
    pool: dbpool.Pool | dbpool.Connection,
    workflows: registry.Registry,
    config: settings.EngineSettings,
    *,
    tenant_id: str,
    workflow: str,
    task_input: Any,
    priority: int = 0,
    run_after: dt.datetime | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    actor: str,
) -> models.Submitted:
    """Enqueue a task; the same idempotency key of a tenant returns the same task."""
    known = workflows.get(workflow)
    input_json = context.encode(task_input, "the task input is")
    attempts = max_attempts or known.max_attempts or config.max_attempts
    if max_attempts is not None and max_attempts < 1:
        raise errors.InputError(f"max_attempts must be at least 1, not {max_attempts}")
    integration = known.integration
    async with wakeups.submitting(pool) as notify:
        submitted, first_workflow, first_input = await dbtasks.submit_task(
            pool,
            tenant_id=tenant_id,
            workflow=workflow,
            input_json=input_json,
            priority=priority,
            run_after=run_after,
            max_attempts=attempts,
            idempotency_key=idempotency_key,
            concurrency_key=f"integration:{integration}" if integration else None,
            concurrency_limit=config.integration_limits.get(integration) if integration else None,
            actor=actor,
            max_crashes=config.max_crashes,
            notify=notify,
        )
    if not submitted.created and (
        first_workflow != workflow or first_input != json.loads(input_json)
    ):
        raise errors.IdempotencyConflictError(
            f"idempotency key {idempotency_key!r} of tenant {tenant_id!r} was used for task "
            f"{submitted.task_id} with another workflow or input"
        )
    return submitted
