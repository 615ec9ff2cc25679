"""The daemon's side of Type=notify: datagrams to a real $NOTIFY_SOCKET, and the watchdog."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import systemd

DEADLINE = 10.0


class Listener:
    """A datagram socket standing where systemd's notify socket would be."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # as $NOTIFY_SOCKET spells it

    def environ(self, **more: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address, **more}

    def receive(self, timeout: float = DEADLINE) -> list[str]:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode().split("\n")

    async def areceive(self, timeout: float = DEADLINE) -> list[str]:
        return await asyncio.to_thread(self.receive, timeout)

    def pending(self) -> list[list[str]]:
        self.sock.setblocking(False)
        found = []
        while True:
            try:
                found.append(self.sock.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return found


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    """A notify socket on a file path, or in the abstract namespace (`@name`)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = tmp_path / "notify"
        sock.bind(str(path))
        address = str(path)
    else:
        name = f"appliance-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        address = "@" + name
    with sock:
        yield Listener(sock, address)


class TestNotify:
    def test_fields_go_in_one_datagram(self, listener: Listener) -> None:
        """Every field of one call arrives in one datagram, one per line."""
        assert systemd.notify("READY=1", "STATUS=up", environ=listener.environ())
        assert listener.receive() == ["READY=1", "STATUS=up"]

    def test_nothing_without_a_notify_socket(self) -> None:
        """Without $NOTIFY_SOCKET (a terminal, launchd) nothing is sent and nothing fails."""
        assert not systemd.notify("READY=1", environ={})

    def test_a_gone_socket_is_not_fatal(self, tmp_path: Path) -> None:
        """A notify socket that no longer exists (systemd shutting down) is only logged."""
        assert not systemd.notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")})

    def test_status_is_one_line(self, listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
        """A multi-line reason becomes one STATUS line (a newline would start a new field)."""
        monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
        systemd.status("waiting for the tailnet\n(tailscaled is NeedsLogin)")
        assert listener.receive() == ["STATUS=waiting for the tailnet (tailscaled is NeedsLogin)"]

    def test_ready_and_stopping(self, listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
        """ready() sends READY=1 with its status; stopping() sends STOPPING=1."""
        monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
        systemd.ready("ready: edge mode")
        assert listener.receive() == ["READY=1", "STATUS=ready: edge mode"]
        systemd.stopping()
        assert listener.receive()[0] == "STOPPING=1"


class TestWatchdogInterval:
    def test_half_of_watchdog_sec(self) -> None:
        """WatchdogSec=30s arrives as WATCHDOG_USEC=30000000: ping every 15 s."""
        env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
        assert systemd.watchdog_interval(env) == 15.0

    @pytest.mark.parametrize(
        "env",
        [
            {},
            {"WATCHDOG_USEC": "0"},
            {"WATCHDOG_USEC": "soon"},
            {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"},
        ],
        ids=["unset", "zero", "garbage", "another-pid"],
    )
    def test_no_watchdog(self, env: dict[str, str]) -> None:
        """No interval when the watchdog is off, malformed, or meant for another process."""
        assert systemd.watchdog_interval(env) is None


class TestWatchdog:
    @pytest.fixture
    def watched(self, listener: Listener, monkeypatch: pytest.MonkeyPatch) -> Listener:
        """systemd's environment with WatchdogSec=0.1s for this process."""
        monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
        monkeypatch.setenv("WATCHDOG_USEC", "100000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        return listener

    async def test_pings_extend_the_start_then_feed_the_watchdog(self, watched: Listener) -> None:
        """Before READY the pings extend the start timeout; after it they are WATCHDOG=1."""
        async with systemd.watchdog():
            assert await watched.areceive() == ["EXTEND_TIMEOUT_USEC=100000"]
            systemd.ready("ready")
            while (await watched.areceive()) != ["WATCHDOG=1"]:
                pass
            assert await watched.areceive() == ["WATCHDOG=1"]
        await asyncio.sleep(0.3)
        assert watched.pending() == []  # nothing once the block has ended

    async def test_no_pings_without_watchdog_usec(
        self, listener: Listener, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With a notify socket but no WatchdogSec, the block runs and nothing is sent."""
        monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        async with systemd.watchdog():
            await asyncio.sleep(0.3)
        assert listener.pending() == []

    async def test_a_blocked_loop_sends_no_pings(self, watched: Listener) -> None:
        """The pings come from the event loop: while it is blocked, none is sent."""
        async with systemd.watchdog():
            await watched.areceive()
            watched.pending()
            time.sleep(0.5)  # noqa: ASYNC251 - blocks the loop on purpose, as a hung daemon
            assert watched.pending() == []
            await asyncio.sleep(0.3)
            assert watched.pending()  # and they resume with the loop
