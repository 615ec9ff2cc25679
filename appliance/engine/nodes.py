"""A node name is held by one live process at a time.

A worker that starts under a node name takes back the tasks left running under that name: its
own, from before a crash. Two live processes under one name would take each other's tasks while
they run, so the name is held, by a session-level advisory lock on a connection of the holder's
own. Postgres drops the lock with the session, so the hold cannot outlive its holder: the process
dies (its socket closes), its host goes silent (the session ends after `engine.lease_seconds`
without a statement: `idle_session_timeout`, PostgreSQL 14+), or the server restarts. The row of
`appliance.nodes` says who holds the name (pid, host, since, last heartbeat), for people.

A process that finds its name held waits while the holder may be gone (a killed process's
session outlives it by moments, a silent host's by up to a lease) and refuses to start,
NodeNameHeldError (exit 78) naming the holder, as soon as the holder proves alive by beating
twice, or when the name is still held after one and a half leases.

The holder beats every `min(1 s, lease / 3)`. When its session ends (the connection closes) it
takes the name again as soon as Postgres answers (`held` is False meanwhile: the worker claims
nothing); if another process took the name in between, `lost` is set, and the worker stops at
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
from collections.abc import AsyncIterator

from appliance import errors, models
from appliance.db import nodes as dbnodes
from appliance.db import pool as dbpool

log = logging.getLogger(__name__)

BEAT_SECONDS = 1.0


class NodeNameHeldError(errors.ConfigError):
    """Another live process holds this node name."""


def describe(name: str, holder: models.Node | None) -> str:
    """Who holds the name, and what to do about it."""
    if holder is None:
        who = "another session (it left no record)"
    else:
        since = holder.started_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        who = (
            f"pid {holder.pid} on host {holder.host} since {since} "
            f"(last heartbeat {holder.silent_seconds:.1f} s ago)"
        )
    return (
        f"node name {name!r} is held by {who}: give this process another engine.node_name, "
        "or stop that one"
    )


class NodeHold:
    """The hold of one node name by this process (`held()` takes and gives it up)."""

    def __init__(self, dsn: str, node: str, *, lease_seconds: float) -> None:
        self.dsn = dsn
        self.node = node
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.beat_seconds = min(BEAT_SECONDS, lease_seconds / 3)
        self.silence_seconds = lease_seconds
        self.held = False
        self.lost = asyncio.Event()
        self.loss: NodeNameHeldError | None = None
        self._conn: dbpool.Connection | None = None
        self._backend: int | None = None  # the Postgres session that holds the name
        self._wake = asyncio.Event()
        self._beating: asyncio.Task[None] | None = None

    async def acquire(self) -> None:
        """Take the name, waiting while its holder may be gone; NodeNameHeldError if it is not."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.5 * self.silence_seconds + 2 * self.beat_seconds
        beats: list[dt.datetime] = []
        said_waiting = False
        while not await self._try_hold():
            holder = await dbnodes.get_node(self._connection(), self.node)
            if holder is not None and (not beats or holder.heartbeat_at > beats[-1]):
                beats.append(holder.heartbeat_at)
            if len(beats) > 2 or loop.time() > deadline:
                raise NodeNameHeldError(describe(self.node, holder))
            if not said_waiting:
                said_waiting = True
                log.info(
                    "waiting for node name %s: %s",
                    self.node,
                    describe(self.node, holder),
                    extra={"event": "engine.node_waiting", "node": self.node},
                )
            await asyncio.sleep(self.beat_seconds / 4)
        self.held = True
        self._beating = asyncio.create_task(self._beat(), name=f"engine.node.{self.node}")

    async def release(self) -> None:
        """Stop beating and give the name up (Postgres frees it anyway if this fails)."""
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
        if self._conn is not None and not self._conn.is_closed() and self.held:
            with contextlib.suppress(errors.ApplianceError):
                await dbnodes.release_node(self._conn, node=self.node)
        self.held = False
        await self._close()

    def _connection(self) -> dbpool.Connection:
        if self._conn is None:
            raise errors.EngineError("the node hold has no connection")
        return self._conn

    async def _try_hold(self) -> bool:
        if self._conn is None or self._conn.is_closed():
            conn = await dbpool.connect(self.dsn)
            conn.add_termination_listener(self._ended)
            self._conn = conn
            await dbnodes.configure_node_session(
                conn,
                idle_timeout_seconds=self.silence_seconds,
                application_name=f"appliance node {self.node}"[:63],
            )
        backend = await dbnodes.hold_node(self._conn, node=self.node, pid=self.pid, host=self.host)
        if backend is None:
            return False
        self._backend = backend
        return True

    def _ended(self, conn: object) -> None:
        """The holding session ended (the server went away, or ended it): claim nothing until
        the name is held again, and try at once."""
        if conn is self._conn and self.held:
            self.held = False
            self._wake.set()

    async def _beat(self) -> None:
        """Keep the session alive; after a lost connection, take the name again or give up."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.beat_seconds):
                    await self._wake.wait()
            self._wake.clear()
            try:
                if not await self._keep():
                    return
            except errors.DatabaseUnavailableError:
                log.debug("node hold: Postgres out of reach", extra={"event": "engine.node"})
                self.held = False
                await self._close()
            except errors.ApplianceError as exc:
                log.warning(
                    "node hold of %s: %s", self.node, exc, extra={"event": "engine.node_error"}
                )

    async def _keep(self) -> bool:
        """One beat, or one try to take the name again; False once another process has it."""
        if self.held:
            await dbnodes.beat_node(self._connection(), node=self.node)
            return True
        if await self._try_hold():
            self.held = True
            log.info(
                "node name %s held again",
                self.node,
                extra={"event": "engine.node_held_again", "node": self.node},
            )
            return True
        holder = await dbnodes.get_node(self._connection(), self.node)
        if holder is not None and holder.backend_pid == self._backend:
            return True  # this hold's old session, which the server has not ended yet
        self._lose(holder)
        return False

    def _lose(self, holder: models.Node | None) -> None:
        self.loss = NodeNameHeldError(
            f"this process lost its node name while Postgres was out of reach: "
            f"{describe(self.node, holder)}"
        )
        log.error("%s", self.loss, extra={"event": "engine.node_lost", "node": self.node})
        self.lost.set()

    async def _close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # a dead connection does not close cleanly
                await conn.close(timeout=2)


@contextlib.asynccontextmanager
async def held(dsn: str, node: str, *, lease_seconds: float) -> AsyncIterator[NodeHold]:
    """Hold the node name for the block (NodeNameHeldError when a live process holds it)."""
    hold = NodeHold(dsn, node, lease_seconds=lease_seconds)
    try:
        await hold.acquire()
        yield hold
    finally:
        await hold.release()
