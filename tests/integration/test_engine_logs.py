"""What the engine logs is true: no lost lease is reported for a task that was not lost."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import context, registry, worker
from tests.support import engine as support

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]


def lease_lost_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "engine.lease_lost"]


class TestHeartbeatLog:
    @pytest.mark.parametrize("claimed", [1, 3])
    async def test_a_task_claimed_during_the_renewal_is_not_reported_lost(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        claimed: int,
    ) -> None:
        """Tasks the worker claims while a lease renewal is on its way are not called lost."""
        gate = asyncio.Event()
        reg = registry.Registry()

        async def hold() -> str:
            await gate.wait()
            return "done"

        @reg.workflow("held")
        async def held(ctx: context.TaskContext, task_input: Any) -> Any:
            return await ctx.step("hold", hold)

        cfg = support.engine_settings(concurrency=1 + claimed, lease_seconds=1.5)
        first = await support.submit(db, reg, cfg, workflow="held")
        later: list[int] = []
        renewals: list[set[int]] = []
        running: list[worker.Worker] = []
        real_extend = dbtasks.extend_leases

        async def renewal_meanwhile(*args: Any, **kwargs: Any) -> set[int]:
            renewed = await real_extend(*args, **kwargs)
            renewals.append(renewed)
            if len(renewals) == 1:  # more tasks are claimed before this renewal is read
                later.extend(
                    [await support.submit(db, reg, cfg, workflow="held") for _ in range(claimed)]
                )

                async def all_running() -> bool:
                    return running[0].active == 1 + claimed

                await support.wait_until(all_running, what="the new tasks to be claimed")
            return renewed

        monkeypatch.setattr(dbtasks, "extend_leases", renewal_meanwhile)
        caplog.set_level(logging.WARNING, logger=worker.__name__)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            running.append(w.worker)

            async def read_and_renewed_again() -> bool:
                # the heartbeat renews again only after it has read the first renewal
                return len(renewals) >= 2

            await support.wait_until(read_and_renewed_again, what="a second renewal", workers=[w])
            gate.set()
            tasks = await support.wait_for_all(db, [first, *later], workers=[w])

        assert renewals[0] == {first}
        assert renewals[1] == {first, *later}
        assert {t.state for t in tasks} == {"succeeded"}
        assert lease_lost_records(caplog) == []
