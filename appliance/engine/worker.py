"""The worker: claims tasks, runs their workflows, checkpoints steps, keeps leases alive.

Wake-ups come by LISTEN/NOTIFY; a slow poll is only a safety net. Each finished task claims
its successor in the same commit. A claim that cannot find a task is not made (claims.py):
after a claim came back short, the next one waits for a notification or a due time. A
heartbeat extends the leases of the tasks being run and requeues those whose lease expired
elsewhere (never within a lease of an outage of Postgres, so every worker renews first). A
worker holds its node name (`nodes`) for as long as it runs; holding it, it first takes back
the tasks left running under that name by a process that is gone. An attempt lost with its
worker is not charged against the task's max_attempts.

A workflow's failure is retried with backoff up to max_attempts, unless the error is
`permanent` (errors.py: bad input, an unknown agent or tool, a missing input key, a changed
step): another attempt cannot fix that, so the task fails at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from appliance import errors, metrics, models, settings
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import backoff, claims, context, inputs, nodes, registry

log = logging.getLogger(__name__)

CHANNEL = "appliance_tasks"


class Health:
    """Whether Postgres answers; the daemon's monitor sets it, the worker reads it."""

    def __init__(self) -> None:
        self.ok = True
        self.reason = ""
        self.changed = asyncio.Event()

    def set(self, ok: bool, reason: str = "") -> None:
        if ok != self.ok:
            self.changed.set()
        self.ok, self.reason = ok, reason


class Worker:
    """Runs tasks of the registered workflows, `concurrency` at a time.

    `on_finished(task_id, outcome)` is called after each attempt's final commit (outcome:
    succeeded, failed, retry, cancelled, released, waiting). `services` are handed to every
    workflow as `ctx.services` (the agent runtime, for one). `node` is the hold of the node
    name when the caller took it (the daemon does, to refuse a start early); else `run()`
    takes it.
    """

    def __init__(
        self,
        pool: dbpool.Pool,
        dsn: str,
        config: settings.EngineSettings,
        workflows: registry.Registry,
        *,
        health: Health | None = None,
        on_finished: Callable[[int, str], None] | None = None,
        services: Mapping[str, Any] | None = None,
        node: nodes.NodeHold | None = None,
    ) -> None:
        self._pool = pool
        self._dsn = dsn
        self._config = config
        self._registry = workflows
        self._names = workflows.names()
        self.health = health or Health()
        self._on_finished = on_finished
        self._services = services or {}
        self.node = config.node_name
        self.worker_id = f"{config.node_name}:{os.getpid()}:{secrets.token_hex(3)}"
        self._wake = asyncio.Event()
        self._draining = False
        self._stopped = asyncio.Event()
        self._claiming_done = asyncio.Event()
        self._slots: set[asyncio.Task[None]] = set()
        self._running: dict[int, int] = {}
        self._abandoned: set[int] = set()
        self._node = node
        self._misses = 0  # times Postgres was out of reach (the sweep reports new ones)
        self._misses_reported = 0
        self._listener: dbpool.Connection | None = None
        self._gate = claims.ClaimGate()
        self.started = asyncio.Event()

    # ---- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Work until stop(); returns after the drain. Raises NodeNameHeldError when a live
        process holds the node name, or took it over while Postgres was out of reach."""
        node = self._node
        try:
            async with contextlib.AsyncExitStack() as stack:
                if node is None:
                    node = await stack.enter_async_context(
                        nodes.held(self._dsn, self.node, lease_seconds=self._config.lease_seconds)
                    )
                    self._node = node
                await self._work(node)
        finally:
            self._claiming_done.set()
            self._stopped.set()
        if node.loss is not None:
            raise node.loss

    async def _work(self, node: nodes.NodeHold) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(), name="engine.heartbeat")
        watch = asyncio.create_task(self._watch_node(node), name="engine.node_watch")
        try:
            await self._reclaim_own()
            self.started.set()
            await self._loop()
        finally:
            self._claiming_done.set()
            for task in (heartbeat, watch):
                task.cancel()
            await asyncio.gather(heartbeat, watch, return_exceptions=True)
            await self._close_listener()

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; let running steps finish within the grace period; release the rest."""
        grace = self._config.shutdown_grace_seconds if grace is None else grace
        self._draining = True
        self._wake.set()
        if self.started.is_set():
            await self._claiming_done.wait()
        if self._slots:
            _, late = await asyncio.wait(set(self._slots), timeout=grace)
            for slot in late:
                slot.cancel()
            if late:
                await asyncio.wait(late)
        await self._stopped.wait()

    @property
    def active(self) -> int:
        return len(self._running)

    # ---- claiming --------------------------------------------------------------------------

    async def _watch_node(self, node: nodes.NodeHold) -> None:
        """Another process took the node name (and this node's tasks): stop everything now."""
        await node.lost.wait()
        self._draining = True
        for slot in list(self._slots):
            slot.cancel()
        self._wake.set()

    async def _reclaim_own(self) -> None:
        """After a crash of this node, its tasks resume at once instead of after the lease
        (the node name is held: the process that ran them is gone)."""
        try:
            count = await dbtasks.requeue_abandoned(
                self._pool, node=self.node, actor=self.worker_id
            )
        except errors.DatabaseUnavailableError:
            return
        if count:
            log.info(
                "took back %d task(s) of node %s",
                count,
                self.node,
                extra={"event": "engine.reclaimed", "count": count},
            )

    async def _loop(self) -> None:
        while not self._draining:
            self._wake.clear()
            if self.health.ok and self._node is not None and self._node.held:
                await self._ensure_listener()
                await self._release_abandoned()
                if self._may_claim():
                    claimed = await self._claim(self._config.concurrency - len(self._slots))
                    for task in claimed:
                        self._start_slot(task)
            else:
                self._gate.forget()
            timeout = await self._idle_timeout()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                self._gate.forget()  # the safety-net poll, or a delayed task's time

    def _may_claim(self) -> bool:
        """Whether a claim may find a task (always, while no notification can arrive)."""
        if self._listener is None or self._listener.is_closed():
            self._gate.forget()
        return self._gate.open()

    async def _claim(self, free: int) -> list[models.ClaimedTask]:
        if free <= 0 or not self._names:
            return []
        ticket = self._gate.asking(free)
        claimed: list[models.ClaimedTask] | None = None
        try:
            claimed = await dbtasks.claim_tasks(
                self._pool,
                worker=self.worker_id,
                node=self.node,
                limit=free,
                lease_seconds=self._config.lease_seconds,
                workflows=self._names,
                tenant_share=self._config.tenant_concurrency,
            )
        except errors.DatabaseUnavailableError:
            self._misses += 1
            log.debug("claim skipped: database unavailable", extra={"event": "engine.claim"})
            return []
        except errors.ApplianceError as exc:
            log.error("claim failed: %s", exc, extra={"event": "engine.claim_failed"})
            return []
        finally:
            self._answered(ticket, free, claimed)
        return claimed

    def _answered(self, ticket: int, asked: int, claimed: list[models.ClaimedTask] | None) -> None:
        """Tell the gate what a claim found (None: it failed, so nothing is known)."""
        if self._gate.claimed(ticket, asked=asked, got=len(claimed or ())):
            self._wake.set()  # a claim held back for this one: the loop looks again
        if claimed is None:
            self._gate.forget()

    async def _idle_timeout(self) -> float:
        """Sleep until the safety-net poll or the next delayed task, whichever is sooner."""
        timeout = self._config.poll_seconds
        if self._node is not None and not self._node.held:
            return min(timeout, self._node.beat_seconds)  # claim again once it is held
        if not self.health.ok or len(self._slots) >= self._config.concurrency:
            return timeout
        known, due = self._gate.due(dt.datetime.now(dt.UTC))
        if not known:
            ticket = self._gate.ticket()
            try:
                due = await dbtasks.next_due_at(self._pool, workflows=self._names)
            except errors.ApplianceError:
                return timeout
            self._gate.due_found(ticket, due)
        if due is not None:
            wait = (due - dt.datetime.now(dt.UTC)).total_seconds()
            timeout = max(0.0, min(timeout, wait + 0.001))
        return timeout

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        try:
            self._listener = await dbpool.connect(self._dsn)
            await self._listener.add_listener(CHANNEL, self._notified)
        except errors.ApplianceError:
            self._listener = None
        self._gate.forget()  # what was notified before it listened is not known

    def _notified(self, *_: object) -> None:
        self._gate.notified()
        self._wake.set()

    async def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=2)
            self._listener = None

    async def _release_abandoned(self) -> None:
        """Tasks given up while Postgres was away go back to the queue once it answers."""
        if not self._abandoned:
            return
        ids = sorted(self._abandoned)
        try:
            await dbtasks.requeue_abandoned(self._pool, task_ids=ids, actor=self.worker_id)
        except errors.DatabaseUnavailableError:
            self._misses += 1
            return
        self._abandoned.difference_update(ids)

    async def _heartbeat(self) -> None:
        """Renew this worker's leases, then sweep expired ones (reporting an outage it saw)."""
        interval = self._config.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            if not self.health.ok:
                self._misses += 1
                continue
            try:
                await self._renew()
                misses = self._misses
                await dbtasks.expire_leases(
                    self._pool,
                    actor=self.worker_id,
                    lease_seconds=self._config.lease_seconds,
                    outage=misses > self._misses_reported,
                )
                self._misses_reported = misses
            except errors.DatabaseUnavailableError as exc:
                self._misses += 1
                log.debug("heartbeat failed: %s", exc, extra={"event": "engine.heartbeat"})
            except errors.ApplianceError as exc:
                log.debug("heartbeat failed: %s", exc, extra={"event": "engine.heartbeat"})

    async def _renew(self) -> None:
        """Extend the leases of the running attempts. A task claimed during the round trip was
        not asked about, and one that ended meanwhile is no longer this worker's: neither is
        a lost lease."""
        asked = dict(self._running)
        if not asked:
            return
        held = await dbtasks.extend_leases(
            self._pool,
            worker=self.worker_id,
            lease_seconds=self._config.lease_seconds,
            task_ids=list(asked),
        )
        for task_id, attempt in asked.items():
            if task_id not in held and self._running.get(task_id) == attempt:
                log.warning("lease of task %d lost", task_id, extra={"event": "engine.lease_lost"})

    # ---- running ---------------------------------------------------------------------------

    def _start_slot(self, task: models.ClaimedTask) -> None:
        slot = asyncio.create_task(self._slot(task), name=f"engine.task.{task.task_id}")
        self._slots.add(slot)
        slot.add_done_callback(self._slot_done)

    def _slot_done(self, slot: asyncio.Task[None]) -> None:
        self._slots.discard(slot)
        if not slot.cancelled() and slot.exception() is not None:
            log.error(
                "task slot crashed",
                exc_info=slot.exception(),
                extra={"event": "engine.slot_crashed"},
            )
        self._wake.set()

    async def _slot(self, first: models.ClaimedTask) -> None:
        task: models.ClaimedTask | None = first
        while task is not None:
            current = task
            self._running[current.task_id] = current.attempt
            try:
                task = await self._run(current)
            finally:
                self._running.pop(current.task_id, None)

    async def _run(self, task: models.ClaimedTask) -> models.ClaimedTask | None:
        """Run one attempt; return the next task claimed in the same commit, if any."""
        ctx = context.TaskContext(
            task_id=task.task_id,
            tenant_id=task.tenant_id,
            attempt=task.attempt,
            checkpoints=task.checkpoints,
            writer=lambda step: self._write_step(task, step),
            draining=lambda: self._draining,
            services=self._services,
            worker_id=self.worker_id,
            workflow=task.workflow,
        )
        try:
            workflow = self._registry.get(task.workflow)
            output = await workflow.fn(ctx, inputs.of(task.input))
            output_json = context.encode(output, f"workflow {task.workflow!r} returned")
        except context.Released:
            return await self._finish(task, ctx, "released")
        except context.Cancelled:
            return await self._finish(task, ctx, "cancelled")
        except asyncio.CancelledError:
            with contextlib.suppress(errors.ApplianceError):
                await self._finish(task, ctx, "released", claim=False)
            raise
        except errors.LeaseLostError as exc:
            log.warning("%s", exc, extra={"event": "engine.lease_lost", "task_id": task.task_id})
            return None
        except errors.DatabaseUnavailableError:
            self._misses += 1
            self._abandoned.add(task.task_id)
            return None
        except errors.WaitError as exc:
            log.info(
                "task %d waits: %s",
                task.task_id,
                exc.reason,
                extra={"event": "engine.task_waiting", "task_id": task.task_id},
            )
            return await self._finish(task, ctx, "waiting", error=exc.reason, failed=True)
        except Exception as exc:  # noqa: BLE001 - any failure of workflow code ends the attempt
            if isinstance(exc, errors.ApplianceError) and exc.permanent:
                return await self._failed_for_good(task, ctx, exc)
            return await self._failed(task, ctx, exc)
        return await self._finish(task, ctx, "succeeded", output_json=output_json)

    async def _write_step(self, task: models.ClaimedTask, step: models.PendingStep) -> bool:
        cancel = await dbtasks.record_step(
            self._pool, task_id=task.task_id, worker=self.worker_id, attempt=task.attempt, step=step
        )
        _observe(task, step)
        return cancel

    async def _failed_for_good(
        self, task: models.ClaimedTask, ctx: context.TaskContext, exc: errors.ApplianceError
    ) -> models.ClaimedTask | None:
        """An error another attempt cannot fix: the task fails now, with the reason."""
        error = _describe(exc)
        log.warning(
            "task %d failed (permanent, not retried): %s",
            task.task_id,
            error,
            extra={"event": "engine.task_failed", "task_id": task.task_id, "permanent": True},
        )
        return await self._finish(task, ctx, "failed", error=error, failed=True)

    async def _failed(
        self, task: models.ClaimedTask, ctx: context.TaskContext, exc: Exception
    ) -> models.ClaimedTask | None:
        error = _describe(exc)
        if task.attempt >= task.max_attempts:
            log.warning(
                "task %d failed after %d attempt(s): %s",
                task.task_id,
                task.attempt,
                error,
                extra={"event": "engine.task_failed", "task_id": task.task_id},
            )
            return await self._finish(task, ctx, "failed", error=error, failed=True)
        wait = backoff.delay(
            task.attempt,
            base=self._config.retry_base_seconds,
            cap=self._config.retry_max_seconds,
        )
        retry_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=wait)
        log.info(
            "task %d attempt %d failed, retry in %.2fs: %s",
            task.task_id,
            task.attempt,
            wait,
            error,
            extra={"event": "engine.retry_scheduled", "task_id": task.task_id},
        )
        return await self._finish(task, ctx, "retry", error=error, retry_at=retry_at, failed=True)

    async def _finish(
        self,
        task: models.ClaimedTask,
        ctx: context.TaskContext,
        outcome: str,
        *,
        output_json: str | None = None,
        error: str | None = None,
        retry_at: dt.datetime | None = None,
        claim: bool = True,
        failed: bool = False,
    ) -> models.ClaimedTask | None:
        holding = self._node is None or self._node.held
        ready = claim and not self._draining and self.health.ok and holding
        take = 1 if ready and self._may_claim() else 0
        self._running.pop(task.task_id, None)  # ending: no longer the heartbeat's to renew
        step = ctx.unwritten(failed)
        ticket = self._gate.asking(take)
        claimed: list[models.ClaimedTask] | None = None
        try:
            claimed = await dbtasks.finish_task(
                self._pool,
                task_id=task.task_id,
                worker=self.worker_id,
                attempt=task.attempt,
                outcome=outcome,
                output_json=output_json,
                error=error,
                retry_at=retry_at,
                step=step,
                node=self.node,
                claim=take,
                lease_seconds=self._config.lease_seconds,
                workflows=self._names,
                tenant_share=self._config.tenant_concurrency,
            )
        except errors.LeaseLostError as exc:
            log.warning("%s", exc, extra={"event": "engine.lease_lost", "task_id": task.task_id})
            return None
        except errors.DatabaseUnavailableError:
            self._misses += 1
            self._abandoned.add(task.task_id)
            return None
        finally:
            self._answered(ticket, take, claimed)
        ctx.written()
        if step is not None:
            _observe(task, step)
        if self._on_finished is not None:
            self._on_finished(task.task_id, outcome)
        return claimed[0] if claimed else None


def _observe(task: models.ClaimedTask, step: models.PendingStep) -> None:
    """A written checkpoint's step in the step-duration histogram."""
    metrics.STEP_DURATION.labels(task.workflow).observe(step.duration_ms / 1000)


def _describe(exc: BaseException) -> str:
    """The error as a person reads it; NUL (which Postgres text cannot hold) made visible."""
    text = str(exc).replace("\x00", "\\x00")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
