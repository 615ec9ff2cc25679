"""The daemon's exposure recheck: what one round reports, and what readiness shows."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import sys
from typing import Any

import pytest

from appliance import errors, health, metrics
from appliance.db import exposure as dbexposure
from appliance.mesh import exposure, recheck, sockets

ANY4 = "0.0.0.0"  # noqa: S104 - a socket description, never bound here
LAN = "192.168.50.2"


def sock(address: str, port: int, *, pid: int | None, inode: int, **fields: Any) -> sockets.Socket:
    """A listening TCP socket as the listing reports it."""
    values: dict[str, Any] = {"command": "python3", "uid": 0}
    values.update(fields)
    return sockets.Socket(
        protocol="tcp6" if ":" in address else "tcp",
        address=ipaddress.ip_address(address),
        port=port,
        inode=inode,
        state="LISTEN",
        pid=pid,
        **values,
    )


class Box:
    """The sockets a round lists, and the events it wrote."""

    def __init__(self) -> None:
        self.sockets: list[sockets.Socket] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.database_down = False
        self.unreadable = False

    def listing(self) -> list[sockets.Socket]:
        if self.unreadable:
            raise errors.DependencyError("cannot read /proc/self/net/tcp: permission denied")
        return list(self.sockets)

    async def announce(self, event_type: dbexposure.EventType, payload: dict[str, Any]) -> None:
        if self.database_down:
            raise errors.DatabaseUnavailableError("connection refused")
        self.events.append((event_type, payload))


@pytest.fixture
def box() -> Box:
    return Box()


@pytest.fixture
def readiness() -> health.Readiness:
    return health.Readiness(database=True, database_reason="", schema_current=True)


@pytest.fixture
def checker(box: Box, readiness: health.Readiness) -> recheck.Recheck:
    """A recheck over `box`, every 0.5 s, with the default policy."""
    return recheck.Recheck(
        period=0.5,
        policy=exposure.Policy,
        readiness=readiness,
        announce=box.announce,
        node="edge-1",
        listing=box.listing,
    )


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "event", "") == event]


class TestRound:
    async def test_another_process_violation_is_reported_once(
        self, box: Box, checker: recheck.Recheck, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A new LAN listener: one event and one warning naming pid and process, per violation."""
        box.sockets = [sock(LAN, 9000, pid=31337, inode=7, command="nc")]
        for _ in range(3):
            await checker.check()
        [(event_type, payload)] = box.events
        assert event_type == "exposure.violation"
        assert (payload["endpoint"], payload["pid"], payload["process"]) == (
            f"{LAN}:9000",
            31337,
            "nc",
        )
        assert (payload["daemon"], payload["node"]) == (False, "edge-1")
        [line] = events(caplog, "exposure.violation")
        assert f"tcp {LAN}:9000, pid 31337 (nc)" in line.getMessage()

    async def test_another_process_violation_leaves_readiness_green(
        self, box: Box, checker: recheck.Recheck, readiness: health.Readiness
    ) -> None:
        """Reported, but the daemon still works: readiness is not held by other services."""
        box.sockets = [sock(ANY4, 22, pid=1, inode=7, command="sshd")]
        await checker.check()
        assert readiness.ready

    async def test_the_daemon_own_violation_turns_readiness_red(
        self, box: Box, checker: recheck.Recheck, readiness: health.Readiness
    ) -> None:
        """A socket of our own process: red, with the socket as the reason."""
        box.sockets = [sock(ANY4, 9000, pid=os.getpid(), inode=8, command="appliance")]
        await checker.check()
        assert not readiness.ready
        assert readiness.reasons() == [
            f"exposure: tcp 0.0.0.0:9000, pid {os.getpid()} (appliance) faces outside the tailnet"
        ]
        assert readiness.retry_after() == 1
        assert box.events[0][1]["daemon"] is True

    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc ancestry")
    async def test_a_descendant_violation_is_the_daemon_own(
        self, box: Box, checker: recheck.Recheck, readiness: health.Readiness
    ) -> None:
        """A process the daemon started (a tool, what it left behind) holds readiness too."""
        child = await asyncio.create_subprocess_exec("sleep", "30")
        try:
            box.sockets = [sock(ANY4, 9000, pid=child.pid, inode=9, command="sleep")]
            await checker.check()
        finally:
            child.kill()
            await child.wait()
        assert not readiness.ready

    async def test_violations_are_counted_once_and_the_standing_ones_gauged(
        self, box: Box, checker: recheck.Recheck
    ) -> None:
        """Each new violation counts once by holder; the gauge follows what stands."""

        def figures() -> tuple[float, float]:
            other = {"holder": "other"}
            counted = metrics.REGISTRY.get_sample_value(
                "appliance_exposure_violations_total", other
            )
            standing = metrics.REGISTRY.get_sample_value(
                "appliance_exposure_violating_sockets", other
            )
            return counted or 0.0, standing or 0.0

        before, _ = figures()
        box.sockets = [sock(LAN, 9000, pid=1, inode=7), sock(LAN, 9001, pid=1, inode=8)]
        await checker.check()
        await checker.check()
        assert figures() == (before + 2, 2)
        box.sockets = box.sockets[:1]
        await checker.check()
        assert figures() == (before + 2, 1)

    async def test_recovery_when_the_socket_goes(
        self,
        box: Box,
        checker: recheck.Recheck,
        readiness: health.Readiness,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The socket closes: readiness green again, one `exposure.resolved` event and line."""
        caplog.set_level(logging.INFO, logger="appliance.mesh.recheck")
        box.sockets = [sock(ANY4, 9000, pid=os.getpid(), inode=8)]
        await checker.check()
        box.sockets = []
        await checker.check()
        await checker.check()
        assert readiness.ready
        assert [event_type for event_type, _ in box.events] == [
            "exposure.violation",
            "exposure.resolved",
        ]
        assert len(events(caplog, "exposure.resolved")) == 1

    async def test_a_socket_reopened_is_a_new_violation(
        self, box: Box, checker: recheck.Recheck
    ) -> None:
        """Same port, a new socket (another inode): reported again."""
        box.sockets = [sock(LAN, 9000, pid=5, inode=1)]
        await checker.check()
        box.sockets = [sock(LAN, 9000, pid=5, inode=2)]
        await checker.check()
        assert [event_type for event_type, _ in box.events] == [
            "exposure.violation",
            "exposure.resolved",
            "exposure.violation",
        ]

    async def test_allowed_and_local_sockets_are_not_reported(
        self, box: Box, checker: recheck.Recheck
    ) -> None:
        """Loopback, tailnet and tailscaled's UDP port: nothing to say."""
        box.sockets = [
            sock("127.0.0.1", 5432, pid=10, inode=1),
            sock("100.100.1.2", 8470, pid=os.getpid(), inode=2),
            sockets.Socket(
                protocol="udp",
                address=ipaddress.IPv4Address(0),
                port=41641,
                inode=3,
                state="UNCONN",
                pid=11,
                command="tailscaled",
            ),
        ]
        await checker.check()
        assert box.events == []

    async def test_events_wait_for_the_database_in_order(
        self, box: Box, checker: recheck.Recheck, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Postgres away: the log line at once, the events later, in order, said once."""
        box.database_down = True
        box.sockets = [sock(LAN, 9000, pid=5, inode=1)]
        await checker.check()
        box.sockets = []
        await checker.check()
        assert box.events == []
        box.database_down = False
        await checker.check()
        assert [event_type for event_type, _ in box.events] == [
            "exposure.violation",
            "exposure.resolved",
        ]
        assert len(events(caplog, "exposure.violation")) == 1
        assert len(events(caplog, "exposure.events_waiting")) == 1

    async def test_a_listing_that_fails_is_said_once(
        self,
        box: Box,
        checker: recheck.Recheck,
        readiness: health.Readiness,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """No /proc: one warning, readiness as it was, no event."""
        box.unreadable = True
        await checker.check()
        await checker.check()
        assert len(events(caplog, "exposure.unchecked")) == 1
        assert readiness.ready
        assert box.events == []

    async def test_the_policy_is_read_each_round(
        self, box: Box, readiness: health.Readiness
    ) -> None:
        """The ingress declares its socket after start: the round uses the policy as it stands."""
        ingress = sock(ANY4, 8471, pid=os.getpid(), inode=40)
        policies = [exposure.Policy()]
        checker = recheck.Recheck(
            period=0.5,
            policy=lambda: policies[-1],
            readiness=readiness,
            announce=box.announce,
            node="edge-1",
            listing=box.listing,
        )
        declared = exposure.PublicSocket(
            pid=os.getpid(), protocol="tcp", address=ingress.address, port=8471, inode=40
        )
        policies.append(exposure.Policy(public=frozenset({declared})))
        box.sockets = [ingress]
        await checker.check()
        assert (readiness.ready, box.events) == (True, [])

    async def test_a_period_of_zero_turns_it_off(
        self, box: Box, readiness: health.Readiness
    ) -> None:
        """`mesh.recheck_seconds = 0`: run() returns without a round."""
        box.sockets = [sock(LAN, 9000, pid=5, inode=1)]
        checker = recheck.Recheck(
            period=0,
            policy=exposure.Policy,
            readiness=readiness,
            announce=box.announce,
            node="edge-1",
            listing=box.listing,
        )
        await checker.run()
        assert box.events == []
