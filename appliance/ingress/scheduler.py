"""The scheduler: each node's loop that fires the schedules' due slots.

The daemon composes it as an async context manager:

    async with scheduler.Scheduler(pool, registry.registry, config.engine, config.scheduler,
                                   definitions=config.schedules):
        ...      # entering wrote the config's schedules into Postgres (ConfigError naming an
                 # unknown workflow, input or tenant) and started the loop; leaving stops it

Every node runs one, whatever its mode: exactly-once comes from Postgres (see `schedules`), so
more nodes only mean that a slot still fires while some of them are down. The loop asks its
clock for the time, fires every due schedule (one transaction each), then sleeps until the
soonest next slot, at most `poll_seconds` (so it sees what commands changed). The clock is
handed in, so tests run it over simulated time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import types
from collections.abc import Sequence
from typing import Protocol

from appliance import errors, settings
from appliance.db import pool as dbpool
from appliance.db import schedules as dbschedules
from appliance.engine import registry
from appliance.ingress import schedules

log = logging.getLogger(__name__)


class Clock(Protocol):
    """Where the scheduler reads the time and waits."""

    def now(self) -> dt.datetime:
        """The current instant, time zone aware."""
        ...

    async def sleep_until(self, deadline: dt.datetime) -> None:
        """Wait until this clock reaches `deadline` (at once if it has)."""
        ...


class SystemClock:
    """The machine's clock (slots fire by it: keep it synchronised, as NTP does)."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    async def sleep_until(self, deadline: dt.datetime) -> None:
        await asyncio.sleep(max(0.0, (deadline - self.now()).total_seconds()))


class Scheduler:
    """Fires due slots on this node until the context is left."""

    def __init__(
        self,
        pool: dbpool.Pool,
        workflows: registry.Registry,
        engine: settings.EngineSettings,
        config: settings.SchedulerSettings,
        *,
        definitions: Sequence[settings.Schedule] = (),
        clock: Clock | None = None,
    ) -> None:
        self._pool = pool
        self._workflows = workflows
        self._engine = engine
        self._config = config
        self._definitions = definitions
        self._clock: Clock = clock or SystemClock()
        self._loop: asyncio.Task[None] | None = None
        self._failing: set[int] = set()  # schedules whose last try failed: logged once

    async def __aenter__(self) -> Scheduler:
        written = await schedules.sync(
            self._pool, self._workflows, self._definitions, now=self._clock.now()
        )
        if written:
            log.info(
                "schedules from the config written: %s",
                ", ".join(written),
                extra={"event": "schedules.synced", "schedules": written},
            )
        self._loop = asyncio.create_task(self._run(), name="schedules.scheduler")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)

    async def _run(self) -> None:
        poll = self._config.poll_seconds
        while True:
            now = self._clock.now()
            wait = poll
            try:
                await self.fire_due(now)
                soonest = await dbschedules.next_fire_at(self._pool)
            except errors.DatabaseUnavailableError:
                pass  # the outage is logged once, by the daemon's db watch
            else:
                if soonest is not None and soonest > now:
                    wait = min(poll, (soonest - now).total_seconds())
            # From the time the pass began: a slow pass does not push the next look back.
            await self._clock.sleep_until(now + dt.timedelta(seconds=wait))

    async def fire_due(self, now: dt.datetime) -> int:
        """Fire every schedule due at `now` that no other node is firing; how many it fired."""
        grace = dt.timedelta(seconds=self._config.grace_seconds)
        passed_over: list[int] = []
        count = 0
        while True:
            try:
                fired = await schedules.fire_next(
                    self._pool,
                    self._workflows,
                    self._engine,
                    now=now,
                    grace=grace,
                    passed_over=passed_over,
                )
            except schedules.FiringError as exc:
                # One schedule that cannot be fired must not hold up the others: it is passed
                # over until the next round, and logged once until it fires again.
                passed_over.append(exc.schedule_id)
                if exc.schedule_id not in self._failing:
                    self._failing.add(exc.schedule_id)
                    log.error("%s", exc, exc_info=exc.__cause__, extra={"event": "schedule.error"})
                continue
            if fired is None:
                return count
            count += 1
            self._failing.discard(fired.schedule.schedule_id)
            _report(fired, now)


def _report(fired: schedules.Fired, now: dt.datetime) -> None:
    """One log line per slot started, skipped or failed, and one for the slots missed."""
    schedule = fired.schedule
    where = {"schedule": schedule.name, "tenant_id": schedule.tenant_id}
    for slot, task_id in fired.started:
        log.info(
            "schedule %s: slot %s started task %d",
            schedule.name,
            f"{slot:%Y-%m-%dT%H:%M:%SZ}",
            task_id,
            extra={
                "event": "schedule.fired",
                **where,
                "slot": slot.isoformat(),
                "task_id": task_id,
                "lag_seconds": round((now - slot).total_seconds(), 3),
            },
        )
    for slot in fired.skipped:
        log.info(
            "schedule %s: slot %s skipped: its previous task has not ended (overlap = 'skip')",
            schedule.name,
            f"{slot:%Y-%m-%dT%H:%M:%SZ}",
            extra={"event": "schedule.skipped", **where, "slot": slot.isoformat()},
        )
    for slot, reason in fired.failed:
        log.error(
            "schedule %s: slot %s started no task: %s",
            schedule.name,
            f"{slot:%Y-%m-%dT%H:%M:%SZ}",
            reason,
            extra={"event": "schedule.failed", **where, "slot": slot.isoformat()},
        )
    if fired.missed:
        log.warning(
            "schedule %s: %d slot(s) passed while no node fired them (catchup = %r)",
            schedule.name,
            fired.missed,
            schedule.catchup,
            extra={"event": "schedule.missed", **where, "missed": fired.missed},
        )
