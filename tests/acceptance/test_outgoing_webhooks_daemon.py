"""Outgoing webhooks from a running daemon to a real HTTP endpoint that verifies each request
with the `standardwebhooks` library; the secret set with `appliance secrets set`, the backlog
seen by `appliance doctor`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance import vault
from appliance.db import pool as dbpool
from appliance.engine import registry
from tests.support import daemon, workflows
from tests.support import engine as support
from tests.support import receiver as endpoint_support

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


class TestDaemonWebhooks:
    async def test_a_tasks_events_reach_the_endpoint_signed_and_in_order(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """The task.* events of a task the daemon runs arrive verified, in order; doctor shows
        the endpoint with nothing waiting."""
        key_file = tmp_path / "vault.key"
        await vault.open_vault(db, vault.create_key_file(key_file), initialise=True)
        await workflows.create_step_runs(db)
        secret = endpoint_support.new_secret()
        secret_file = tmp_path / "ops.secret"
        secret_file.write_text(secret + "\n")
        async with endpoint_support.receiving(secret) as got:
            overrides: dict[str, Any] = {
                "vault.key_file": str(key_file),
                "outbox.webhooks": [
                    {
                        "name": "ops",
                        "url": got.url,
                        "secret_ref": "outbox/ops",
                        "events": ["task.*"],
                    }
                ],
            }
            stored = await daemon.cli(
                "secrets",
                "set",
                "outbox",
                "ops",
                "--from-file",
                str(secret_file),
                folder=tmp_path,
                dsn=database_dsn,
                overrides=overrides,
            )
            assert stored.code == 0, stored.stderr
            async with daemon.running(database_dsn, tmp_path, overrides=overrides) as run:
                task_id = await support.submit(
                    db, registry.registry, support.engine_settings(), workflow=workflows.COUNTED
                )

                async def ended() -> bool:
                    return "task.succeeded" in got.types

                await daemon.wait_until(ended, what="task.succeeded delivered", daemons=[run])

                async def recorded() -> bool:
                    waiting: int = await db.fetchval(
                        "SELECT count(*) FROM appliance.outgoing_deliveries"
                        " WHERE delivered_at IS NULL"
                    )
                    return waiting == 0

                await daemon.wait_until(recorded, what="deliveries recorded", daemons=[run])
                checked = await daemon.cli(
                    "--json", "doctor", folder=tmp_path, dsn=database_dsn, overrides=overrides
                )

        assert got.unverified == 0
        assert [(p["data"]["task_id"], p["type"]) for p in got.accepted] == [
            (task_id, "task.submitted"),
            (task_id, "task.started"),
            (task_id, "task.succeeded"),
        ]
        [line] = [c for c in checked.json() if c["name"] == "webhook ops"]
        assert (line["ok"], line["detail"]) == (True, f"{got.url}: nothing waiting")
