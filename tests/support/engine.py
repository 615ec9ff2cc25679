"""Helpers of the engine tests: settings, submissions, workers run in the background, waits.

A worker started here reports what goes wrong inside it: if its loop dies or a task slot
crashes, the next wait fails at once with that error instead of running into its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any, TypeVar

from appliance import models, settings
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import registry, submission, worker

T = TypeVar("T")

WAIT_SECONDS = 10.0
POLL_SECONDS = 0.01
STOP_GRACE_SECONDS = 1.0


def engine_settings(**overrides: Any) -> settings.EngineSettings:
    """Settings for a fast test engine; keyword overrides replace any field."""
    values: dict[str, Any] = {
        "node_name": "n1",
        "concurrency": 4,
        "lease_seconds": 5.0,
        "poll_seconds": 0.5,
        "max_attempts": 3,
        "retry_base_seconds": 0.01,
        "retry_max_seconds": 0.05,
        "tenant_concurrency": 2,
        "shutdown_grace_seconds": STOP_GRACE_SECONDS,
    }
    values.update(overrides)
    return settings.EngineSettings(**values)


async def submitted(
    pool: dbpool.Pool,
    workflows: registry.Registry,
    config: settings.EngineSettings,
    *,
    workflow: str,
    task_input: Any = None,
    tenant_id: str = "default",
    **overrides: Any,
) -> models.Submitted:
    """Submit through the real submission path; returns its answer."""
    return await submission.submit(
        pool,
        workflows,
        config,
        tenant_id=tenant_id,
        workflow=workflow,
        task_input=task_input,
        actor="test",
        **overrides,
    )


async def submit(
    pool: dbpool.Pool,
    workflows: registry.Registry,
    config: settings.EngineSettings,
    *,
    workflow: str,
    task_input: Any = None,
    tenant_id: str = "default",
    **overrides: Any,
) -> int:
    """Submit a new task through the real submission path; returns its id."""
    answer = await submitted(
        pool,
        workflows,
        config,
        workflow=workflow,
        task_input=task_input,
        tenant_id=tenant_id,
        **overrides,
    )
    assert answer.created, "the factory expects to create a task"
    return answer.task_id


async def fake_claim(
    pool: dbpool.Pool,
    workflows: registry.Registry,
    *,
    worker_id: str,
    node: str,
    lease_seconds: float,
) -> models.ClaimedTask:
    """Claim one task as a worker that will never run it (a dead worker)."""
    claimed = await dbtasks.claim_tasks(
        pool,
        worker=worker_id,
        node=node,
        limit=1,
        lease_seconds=lease_seconds,
        workflows=workflows.names(),
        tenant_share=100,
    )
    assert len(claimed) == 1, "nothing was ready to be claimed"
    return claimed[0]


async def record_step_as(
    pool: dbpool.Pool, *, task_id: int, worker: str, attempt: int, name: str, position: int = 0
) -> bool:
    """Checkpoint a step through the real query as the given worker and attempt."""
    step = models.PendingStep(
        position=position,
        name=name,
        output_json=json.dumps(name),
        started_at=dt.datetime.now(dt.UTC),
        duration_ms=1.0,
    )
    return await dbtasks.record_step(
        pool, task_id=task_id, worker=worker, attempt=attempt, step=step
    )


class _CrashLog(logging.Handler):
    """Keeps what the worker logs at ERROR (a task slot that crashed, a claim that failed)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.crashes: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.crashes.append(record.exc_info[1])
        else:
            self.crashes.append(RuntimeError(record.getMessage()))


@dataclasses.dataclass
class RunningWorker:
    """A worker whose `run()` goes on in the background."""

    worker: worker.Worker
    run: asyncio.Task[None]
    crash_log: _CrashLog

    def check(self, *, stopped: bool = False) -> None:
        """Fail if a task slot crashed, or the worker's loop ended without being `stopped`."""
        if self.crash_log.crashes:
            raise AssertionError(
                f"worker {self.worker.worker_id} logged an error: {self.crash_log.crashes[0]}"
            ) from self.crash_log.crashes[0]
        if self.run.done() and not stopped:
            error = None if self.run.cancelled() else self.run.exception()
            raise AssertionError(
                f"worker {self.worker.worker_id} stopped running: {error!r}"
            ) from error


@contextlib.asynccontextmanager
async def running_worker(
    pool: dbpool.Pool,
    dsn: str,
    config: settings.EngineSettings,
    workflows: registry.Registry,
    services: Mapping[str, Any] | None = None,
) -> AsyncIterator[RunningWorker]:
    """Run a Worker until the block ends, then stop it and surface any error it died of."""
    engine = worker.Worker(pool, dsn, config, workflows, services=services)
    crash_log = _CrashLog()
    logger = logging.getLogger(worker.__name__)
    logger.addHandler(crash_log)
    run = asyncio.create_task(engine.run(), name=f"test.worker.{config.node_name}")
    running = RunningWorker(engine, run, crash_log)
    body_failed = False
    try:
        started = asyncio.create_task(engine.started.wait())
        await asyncio.wait({run, started}, timeout=WAIT_SECONDS, return_when="FIRST_COMPLETED")
        started.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await started
        running.check()
        assert engine.started.is_set(), "the worker did not start"
        yield running
    except BaseException:
        body_failed = True
        raise
    finally:
        try:
            async with asyncio.timeout(WAIT_SECONDS):
                await engine.stop(grace=STOP_GRACE_SECONDS)
            if not body_failed:
                await run
                running.check(stopped=True)
        finally:
            if not run.done():
                run.cancel()
            with contextlib.suppress(BaseException):
                await run
            logger.removeHandler(crash_log)


async def wait_until(
    condition: Callable[[], Awaitable[T | None]],
    *,
    what: str,
    workers: Collection[RunningWorker] = (),
    timeout: float = WAIT_SECONDS,
) -> T:
    """Poll `condition` until it returns something other than None or False, within `timeout`.

    The one place the tests poll: the engine writes no notification when a task ends.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for running in workers:
            running.check()
        result = await condition()
        if result is not None and result is not False:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(POLL_SECONDS)


async def wait_for_state(
    pool: dbpool.Pool,
    task_id: int,
    states: Collection[str] = models.TERMINAL_STATES,
    *,
    workers: Collection[RunningWorker] = (),
    timeout: float = WAIT_SECONDS,
) -> models.Task:
    """The task, once it is in one of `states` (by default: once it has ended)."""

    async def reached() -> models.Task | None:
        task = await dbtasks.get_task(pool, task_id)
        return task if task is not None and task.state in states else None

    return await wait_until(
        reached, what=f"task {task_id} to be {sorted(states)}", workers=workers, timeout=timeout
    )


async def wait_for_all(
    pool: dbpool.Pool,
    task_ids: Collection[int],
    *,
    workers: Collection[RunningWorker] = (),
    timeout: float = WAIT_SECONDS,
) -> list[models.Task]:
    """Every one of the tasks, once all have ended."""

    async def ended() -> list[models.Task] | None:
        tasks = [await dbtasks.get_task(pool, task_id) for task_id in task_ids]
        done = [t for t in tasks if t is not None and t.state in models.TERMINAL_STATES]
        return done if len(done) == len(task_ids) else None

    return await wait_until(
        ended, what=f"{len(task_ids)} tasks to end", workers=workers, timeout=timeout
    )


async def wait_for_event(event: asyncio.Event, *, timeout: float = WAIT_SECONDS) -> None:
    """Wait for an event a workflow sets, with a clear failure when it never comes."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        raise AssertionError(f"the event was not set within {timeout}s") from None


async def outcomes(pool: dbpool.Pool, task_id: int) -> list[str]:
    """The outcome of each attempt of a task, in order."""
    return [a.outcome for a in await dbtasks.list_attempts(pool, task_id)]


async def event_types(pool: dbpool.Pool, task_id: int) -> list[str]:
    """The types of the task's outbox events, in the order they were written."""
    rows = await pool.fetch(
        "SELECT type FROM appliance.outbox_events WHERE task_id = $1 ORDER BY event_seq", task_id
    )
    return [row["type"] for row in rows]


def seconds(delta: dt.timedelta) -> float:
    return delta.total_seconds()


class Gauge:
    """Counts the executions inside a block at once and keeps the highest count seen."""

    def __init__(self, *, full_at: int | None = None) -> None:
        self.now = 0
        self.peak = 0
        self.full = asyncio.Event()
        self._full_at = full_at

    @contextlib.asynccontextmanager
    async def inside(self) -> AsyncIterator[None]:
        self.now += 1
        self.peak = max(self.peak, self.now)
        if self._full_at is not None and self.now >= self._full_at:
            self.full.set()
        try:
            yield
        finally:
            self.now -= 1
