"""The durable intake: verified webhook deliveries become tasks, committed in groups.

The daemon composes them (the endpoint itself never touches the database):

    intake = ingress.DurableIntake(pool, registry.registry, config.engine)
    intake.check(config.ingress.sources)           # every source names a registered workflow
    app = webhooks.build_app(config.ingress, intake)
    ...                                            # serve it; on shutdown, after the listener:
    await intake.close()                           # before the pool closes

Why deliveries are committed in groups: every submitted task notifies the workers
(`pg_notify` in `appliance.submit_task`), and Postgres serialises the commits of notifying
transactions, WAL flush included, on one lock. One delivery per transaction therefore tops out
at one fsync per delivery (about 1,000-1,400/s measured here). Deliveries that arrive while a
transaction is in flight are committed together in the next one, each through
`submission.submit`, each answered only after that commit: the same durability, one lock and one
flush per group. Nothing waits to fill a group: an idle intake commits a lone delivery at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from appliance import errors, models, settings
from appliance.db import ingress as dbingress
from appliance.db import pool as dbpool
from appliance.engine import registry, submission

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True, eq=False)  # compared by identity
class _Delivery:
    tenant_id: str
    source: str
    workflow: str
    delivery_id: str
    task_input: Any
    body_sha256: bytes | None
    answer: asyncio.Future[models.Submitted]

    @property
    def key(self) -> str:
        return f"hook:{self.source}:{self.delivery_id}"


class _BodySeen(Exception):  # noqa: N818 - rolls a savepoint back, never leaves this module
    pass


class DurableIntake:
    """Enqueues verified deliveries as tasks and remembers their delivery ids, durably.

    A delivery's task is unique per tenant under the idempotency key `hook:<source>:<delivery
    id>`, and its delivery row is written in the task's transaction. A delivery that comes with
    its body's SHA-256 (a scheme that signs the body only) is also unique per source by that
    hash: a body the source delivered before, under any id, is answered with the first task.
    `committers` transactions run at once, each with up to `group_size` deliveries.
    """

    def __init__(
        self,
        pool: dbpool.Pool,
        workflows: registry.Registry,
        config: settings.EngineSettings,
        *,
        committers: int = 4,
        group_size: int = 64,
    ) -> None:
        self._pool = pool
        self._workflows = workflows
        self._config = config
        self._committers = committers
        self._group_size = group_size
        self._waiting: list[_Delivery] = []
        self._committing = 0  # counted down in the committer itself, so none is missed
        self._tasks: set[asyncio.Task[None]] = set()

    def check(self, sources: Iterable[settings.Source]) -> None:
        """ConfigError unless every source starts a registered workflow."""
        for source in sources:
            try:
                self._workflows.get(source.workflow)
            except errors.UnknownWorkflowError as exc:
                raise errors.ConfigError(
                    f"ingress source {source.name!r} of tenant {source.tenant!r}: {exc.message}"
                ) from exc

    async def enqueue(
        self,
        *,
        tenant_id: str,
        source: str,
        workflow: str,
        delivery_id: str,
        task_input: Any,
        body_sha256: bytes | None = None,
    ) -> models.Submitted:
        """The delivery's task, once committed: created now, or the one an earlier delivery
        with its id made (also when that one came with another input: a sender that re-sent
        other headers or another body under the same id; the first task is the answer), or,
        given `body_sha256`, the one an earlier delivery of the same body made."""
        answer: asyncio.Future[models.Submitted] = asyncio.get_running_loop().create_future()
        delivery = _Delivery(
            tenant_id, source, workflow, delivery_id, task_input, body_sha256, answer
        )
        self._waiting.append(delivery)
        if self._committing < self._committers:
            self._committing += 1
            task = asyncio.create_task(self._commit_waiting(), name="ingress.commit")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            return await answer
        except asyncio.CancelledError:
            if delivery in self._waiting:  # not taken yet: it will not be committed
                self._waiting.remove(delivery)
            raise

    async def close(self) -> None:
        """Wait for the transactions in flight (call it after the listener stopped)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _commit_waiting(self) -> None:
        try:
            while self._waiting:
                group = self._waiting[: self._group_size]
                del self._waiting[: self._group_size]
                group = [d for d in group if not d.answer.done()]
                if group:
                    await self._commit_group(group)
        finally:
            self._committing -= 1

    async def _commit_group(self, group: list[_Delivery]) -> None:
        """One transaction for the group; if it fails for a reason other than Postgres being
        away, each delivery is tried alone, so only the one at fault fails."""
        # One order for every transaction: two groups holding the same keys cannot deadlock.
        group.sort(key=lambda d: (d.tenant_id, d.key))
        outcomes: list[models.Submitted | BaseException]
        try:
            answers = await self._transaction(group)
            outcomes = [
                a if a is not None else await self._first_task(d)
                for d, a in zip(group, answers, strict=True)
            ]
        except errors.DependencyError as exc:
            outcomes = [exc] * len(group)
        except errors.ApplianceError as exc:
            if len(group) > 1:
                for delivery in group:
                    await self._commit_group([delivery])
                return
            outcomes = [exc]
        except Exception as exc:
            log.exception(
                "committing %d deliveries failed",
                len(group),
                extra={"event": "ingress.commit_failed"},
            )
            outcomes = [exc] * len(group)
        for delivery, outcome in zip(group, outcomes, strict=True):
            _settle(delivery, outcome)

    async def _transaction(self, group: list[_Delivery]) -> list[models.Submitted | None]:
        """Submit each delivery's task and record the new ones; None: its key was used with
        another input."""
        answers: list[models.Submitted | None] = []
        async with dbingress.transaction(self._pool) as conn:
            for delivery in group:
                try:
                    if delivery.body_sha256 is None:
                        answers.append(await self._submit(conn, delivery))
                    else:
                        answers.append(
                            await self._submit_body_once(conn, delivery, delivery.body_sha256)
                        )
                except errors.IdempotencyConflictError:
                    answers.append(None)  # raised after the statement: the transaction is intact
        return answers

    async def _submit(self, conn: dbpool.Connection, delivery: _Delivery) -> models.Submitted:
        submitted = await submission.submit(
            conn,
            self._workflows,
            self._config,
            tenant_id=delivery.tenant_id,
            workflow=delivery.workflow,
            task_input=delivery.task_input,
            idempotency_key=delivery.key,
            actor=f"hook:{delivery.source}",
        )
        if submitted.created:
            await dbingress.record_delivery(
                conn,
                tenant_id=delivery.tenant_id,
                source=delivery.source,
                delivery_id=delivery.delivery_id,
                task_id=submitted.task_id,
            )
        return submitted

    async def _submit_body_once(
        self, conn: dbpool.Connection, delivery: _Delivery, body_sha256: bytes
    ) -> models.Submitted:
        """Like `_submit`, unless the source delivered this body before: then its first task.
        The task and the body's record are made in a savepoint, undone when a concurrent
        transaction recorded the same body first (the insert waits for it to commit)."""
        where = {"tenant_id": delivery.tenant_id, "source": delivery.source}
        first = await dbingress.find_body(conn, **where, body_sha256=body_sha256)
        if first is not None:
            return models.Submitted(first, created=False)
        try:
            async with conn.transaction():
                submitted = await self._submit(conn, delivery)
                if submitted.created:
                    await _record_body(conn, delivery, body_sha256, submitted.task_id)
        except _BodySeen:
            first = await dbingress.find_body(conn, **where, body_sha256=body_sha256)
            if first is None:  # recorded and gone again (its task deleted) between the two
                raise errors.StateError("a replayed body's first task was deleted") from None
            return models.Submitted(first, created=False)
        return submitted

    async def _first_task(self, delivery: _Delivery) -> models.Submitted | errors.ApplianceError:
        task_id = await dbingress.find_delivery(
            self._pool,
            tenant_id=delivery.tenant_id,
            source=delivery.source,
            delivery_id=delivery.delivery_id,
        )
        if task_id is None:
            return errors.IdempotencyConflictError(
                f"idempotency key {delivery.key!r} of tenant {delivery.tenant_id!r} belongs to "
                "a task that no delivery recorded"
            )
        return models.Submitted(task_id, created=False)


async def _record_body(
    conn: dbpool.Connection, delivery: _Delivery, body_sha256: bytes, task_id: int
) -> None:
    """Record the body as the task's; _BodySeen when another delivery recorded it first."""
    if not await dbingress.record_body(
        conn,
        tenant_id=delivery.tenant_id,
        source=delivery.source,
        body_sha256=body_sha256,
        task_id=task_id,
    ):
        raise _BodySeen


def _settle(delivery: _Delivery, outcome: models.Submitted | BaseException) -> None:
    if delivery.answer.done():  # the request gave up (timeout, client gone)
        return
    if isinstance(outcome, BaseException):
        delivery.answer.set_exception(outcome)
    else:
        delivery.answer.set_result(outcome)
