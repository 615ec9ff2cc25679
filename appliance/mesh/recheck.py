"""The running daemon re-checks every listening socket of the box on a timer.

Every `mesh.recheck_seconds` (0 turns it off) the gate runs over the whole box (its network
namespace). A violation is reported once, when it appears: a WARNING log line naming the
socket and its holder (pid and process name, where visible) and the outbox event
`exposure.violation` (outside any task, in the default tenant's stream), and it counts in
`appliance_exposure_violations_total`. When it goes, an INFO line and `exposure.resolved`.
`appliance_exposure_violating_sockets` says how many stand after each round. An event that
cannot be written (Postgres away) is written at a later round, in order.

Readiness goes red, with the socket as the reason, while a violation *of the daemon* stands:
a socket held by the daemon's process, by a process it started (a descendant), or, when the
daemon runs as a user other than root, by any process of that user (its tools and whatever
they left behind). A violation by another process on the box (an sshd on the LAN) is reported
the same way, and `doctor` and `exposure-check` fail on it, but readiness stays green: the
daemon can still do its work, and it would otherwise be out of service for as long as any
unrelated service of the box misbehaves. At boot the daemon's own violation stays fatal (exit
78, before ready; `listeners`).

It runs wherever the daemon has a console (not in a VPC worker: its host is not the box),
started once every listener is bound. `Recheck.run` is one coroutine; `check` is one round.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from appliance import errors, health, metrics, settings
from appliance.db import exposure as dbexposure
from appliance.db import pool as dbpool
from appliance.mesh import exposure, sockets

log = logging.getLogger(__name__)

Listing = Callable[[], list[sockets.Socket]]
Announce = Callable[[dbexposure.EventType, dict[str, Any]], Awaitable[None]]
Key = tuple[str, str, int | tuple[int | None, int | None]]
DAEMON, OTHER = "daemon", "other"  # who holds a violating socket (the metrics' `holder`)


def box_listing() -> list[sockets.Socket]:
    """The box's listening sockets, holders looked up for those not local (the costly part)."""
    return sockets.listening_sockets(attribute=lambda item: not exposure.is_local(item))


def key_of(item: sockets.Socket) -> Key:
    """What makes a violation the same one from round to round: the socket, not its verdict."""
    return (
        item.protocol,
        item.endpoint,
        item.inode if item.inode is not None else (item.pid, item.fd),
    )


def held_by_daemon(item: sockets.Socket) -> bool:
    """Whether the daemon answers for this socket: its own, a descendant's, or its user's."""
    me = os.getpid()
    if item.pid is not None and (item.pid == me or sockets.descends_from(item.pid, me)):
        return True
    euid = os.geteuid()
    return euid != 0 and item.uid == euid


class Recheck:
    """The box re-checked every `period` seconds; readiness and reports follow violations."""

    def __init__(
        self,
        *,
        period: float,
        policy: Callable[[], exposure.Policy],
        readiness: health.Readiness,
        announce: Announce,
        node: str,
        listing: Listing = box_listing,
    ) -> None:
        self.period = period
        self._policy = policy
        self._readiness = readiness
        self._announce = announce
        self._node = node
        self._listing = listing
        self._standing: dict[Key, sockets.Socket] = {}
        self._unsent: list[tuple[dbexposure.EventType, dict[str, Any]]] = []
        self._unlisted = ""
        self._unwritten = False
        readiness.exposure_recheck_seconds = period

    @classmethod
    def of_daemon(
        cls,
        config: settings.Settings,
        pool: dbpool.Pool,
        readiness: health.Readiness,
        policy: Callable[[], exposure.Policy],
    ) -> Recheck:
        """The daemon's recheck: events in the default tenant's stream, named by node."""

        async def announce(event_type: dbexposure.EventType, payload: dict[str, Any]) -> None:
            await dbexposure.insert_exposure_event(
                pool, tenant_id=config.default_tenant, event_type=event_type, payload=payload
            )

        return cls(
            period=config.mesh.recheck_seconds,
            policy=policy,
            readiness=readiness,
            announce=announce,
            node=config.engine.node_name,
        )

    async def run(self) -> None:
        """Check, then wait a period, until cancelled; nothing when the period is 0."""
        if self.period <= 0:
            return
        while True:
            await self.check()
            await asyncio.sleep(self.period)

    async def check(self) -> None:
        """One round: list, compare with the last round, report changes, set readiness."""
        policy = self._policy()
        try:
            found = await asyncio.to_thread(self._listing)
        except errors.ApplianceError as exc:
            if exc.message != self._unlisted:
                log.warning(
                    "exposure recheck cannot list the listening sockets: %s",
                    exc.message,
                    extra={"event": "exposure.unchecked"},
                )
                self._unlisted = exc.message
            return
        self._unlisted = ""
        current = {key_of(item): item for item in exposure.violations(found, policy)}
        for key, item in self._standing.items():
            if key not in current:
                self._report_resolved(item, policy)
        for key, item in current.items():
            if key not in self._standing:
                self._report(item, policy)
        self._standing = current
        own = tuple(item.describe() for item in current.values() if held_by_daemon(item))
        self._readiness.exposure = own
        metrics.EXPOSED_SOCKETS.labels(DAEMON).set(len(own))
        metrics.EXPOSED_SOCKETS.labels(OTHER).set(len(current) - len(own))
        await self._send()

    def _payload(self, item: sockets.Socket, policy: exposure.Policy) -> dict[str, Any]:
        return {
            **exposure.socket_json(item, policy),
            "socket": item.describe(),
            "daemon": held_by_daemon(item),
            "node": self._node,
        }

    def _report(self, item: sockets.Socket, policy: exposure.Policy) -> None:
        own = held_by_daemon(item)
        metrics.EXPOSURE_VIOLATIONS.labels(DAEMON if own else OTHER).inc()
        log.warning(
            "exposure violation: %s is reachable from outside the tailnet%s",
            item.describe(),
            " (the daemon's: readiness is red)" if own else "",
            extra={
                "event": "exposure.violation",
                "socket": item.endpoint,
                "protocol": item.protocol,
                "pid": item.pid,
                "command": item.command,
                "uid": item.uid,
                "daemon": own,
            },
        )
        self._unsent.append(("exposure.violation", self._payload(item, policy)))

    def _report_resolved(self, item: sockets.Socket, policy: exposure.Policy) -> None:
        log.info(
            "exposure violation resolved: %s is gone",
            item.describe(),
            extra={"event": "exposure.resolved", "socket": item.endpoint, "pid": item.pid},
        )
        self._unsent.append(("exposure.resolved", self._payload(item, policy)))

    async def _send(self) -> None:
        """Write the events not written yet, in order; stop at the first that fails."""
        while self._unsent:
            event_type, payload = self._unsent[0]
            try:
                await self._announce(event_type, payload)
            except errors.ApplianceError as exc:
                if not self._unwritten:  # once per outage: db.watch reports the outage itself
                    log.warning(
                        "exposure events wait for the database: %s",
                        exc.message,
                        extra={"event": "exposure.events_waiting"},
                    )
                self._unwritten = True
                return
            self._unsent.pop(0)
        self._unwritten = False
