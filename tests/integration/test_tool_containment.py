"""A tool call that tries to take connections from outside and to outlive itself, run through
the real supervisor inside a network namespace of its own (`tests.support.netns`), so that
the box-wide verdict is the call's alone.

The tool (`tests.support.tools.open_doors`) tries every way to a listening or receiving socket:
listen() on an unbound TCP socket (the kernel binds the wildcard), bind and listen on 0.0.0.0,
127.0.0.1, :: and ::1, UDP bound, bound by sendto or left bound by a connect undone with
AF_UNSPEC (IPv4 and IPv6), accept, io_uring, listen() by its x32 and its i386 numbers; and it
leaves processes behind: a child, and a daemon that forks twice, setsid()s and ignores SIGTERM
and SIGHUP while it holds whatever sockets were made. While the call holds at its gate and
after it ended, `appliance exposure-check` (the installed command) passes in the namespace,
the namespace's /proc/net tables show no listening TCP socket but the test's gate and no UDP
socket at all, and afterwards no process the call started is alive: after its answer, after
its time limit, and after a kill -9 of the process that runs the supervisor.

Skipped, with the reason, where no namespace can be made (not root, no `ip netns`, no veth).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import daemon, isolation, netns

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 90.0
REFUSED = "refused: EPERM"
PROTOCOLS = ("tcp", "tcp6", "udp", "udp6")
LISTEN = "0A"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def namespace() -> Iterator[netns.Namespace]:
    """A fresh namespace with `tailscale0` = 100.100.1.2/24; removed afterwards."""
    try:
        with netns.namespace() as created:
            yield created
    except netns.NamespaceUnavailableError as exc:
        pytest.skip(f"no network namespace here: {exc}")


@pytest.fixture
def marker() -> Iterator[str]:
    """The name the call's leftovers carry; whatever still runs afterwards is killed."""
    name = f"appliance-leftover-{uuid.uuid4().hex[:12]}"
    yield name
    for pid in isolation.marked(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def exposure_check(namespace: netns.Namespace, config: Path) -> subprocess.CompletedProcess[str]:
    """`appliance exposure-check`, the installed command, inside the namespace."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    return subprocess.run(
        namespace.command(*daemon.command(), "--config", str(config), "exposure-check"),
        capture_output=True,
        text=True,
        timeout=SECONDS,
        env=environment,
        check=False,
    )


def sockets(namespace: netns.Namespace) -> dict[str, list[tuple[str, str]]]:
    """Every socket in the namespace's /proc/net/{tcp,tcp6,udp,udp6}: (local address, state)."""
    found: dict[str, list[tuple[str, str]]] = {}
    for protocol in PROTOCOLS:
        table = subprocess.run(
            namespace.command("cat", f"/proc/net/{protocol}"),
            capture_output=True,
            text=True,
            timeout=SECONDS,
            check=True,
        ).stdout
        rows = [line.split() for line in table.splitlines()[1:] if line.strip()]
        found[protocol] = [(row[1], row[3]) for row in rows]
    return found


def listening(found: dict[str, list[tuple[str, str]]]) -> list[str]:
    """The local ports of listening TCP sockets, as /proc/net writes them (hex)."""
    tcp = [entry for protocol in ("tcp", "tcp6") for entry in found[protocol]]
    return [address.rsplit(":", 1)[1] for address, state in tcp if state == LISTEN]


class Driver:
    """`python -m tests.support.isolation open-doors` inside the namespace."""

    def __init__(self, namespace: netns.Namespace, marker: str, *arguments: str) -> None:
        self.process = subprocess.Popen(
            namespace.command(
                sys.executable, "-m", "tests.support.isolation", "open-doors", marker, *arguments
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=netns.environment(),
        )

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the driver exited ({self.process.wait(SECONDS)}) without a word"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def release(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def finish(self) -> int:
        return self.process.wait(SECONDS)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(SECONDS)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """An empty config file: the exposure check at its defaults."""
    path = tmp_path / "appliance.toml"
    path.write_text("")
    return path


class TestDoors:
    def test_no_door_opens_during_the_call_and_nothing_stays_after_it(
        self, namespace: netns.Namespace, marker: str, config: Path
    ) -> None:
        """Every attempt is refused (or killed, for another ABI); the exposure check passes
        while the call holds and after it; the only listener is the gate; no UDP socket; the
        processes the call left are alive during it and gone after it."""
        driver = Driver(namespace, marker)
        try:
            holding = driver.read()
            during = (exposure_check(namespace, config), sockets(namespace))
            alive = isolation.marked(marker)
            driver.release()
            done = driver.read()
            assert driver.finish() == 0
        finally:
            driver.close()
        after = (exposure_check(namespace, config), sockets(namespace))

        report = holding["holding"]
        refused = {name: outcome for name, outcome in report.items() if outcome == REFUSED}
        assert set(report) - set(refused) == {"x32_listen", "i386_listen", "leftovers"}, report
        assert report["x32_listen"] == "killed: SIGSYS"
        assert report["i386_listen"] in ("killed: SIGSYS", "killed: SIGSEGV")  # no IA32 here
        assert done == {"result": report}
        gate = f"{holding['gate']:04X}"
        for check, tables in (during, after):
            assert check.returncode == 0, check.stdout + check.stderr
            assert tables["udp"] == tables["udp6"] == []
        assert listening(during[1]) == [gate]
        assert listening(after[1]) == []
        assert len(alive) >= 2, "the call should have left a child and a daemon running"
        assert isolation.marked(marker) == []

    def test_a_call_killed_at_its_time_limit_leaves_nothing_either(
        self, namespace: netns.Namespace, marker: str, config: Path
    ) -> None:
        """The gate never opens: the supervisor ends the call at call_timeout_seconds, and
        the daemon-like leftovers go with it."""
        driver = Driver(namespace, marker, "--timeout", "3")
        try:
            driver.read()
            alive = isolation.marked(marker)
            done = driver.read()
            assert driver.finish() == 0
        finally:
            driver.close()

        assert "ran past its 3 s limit" in done["error"]
        assert len(alive) >= 2
        assert isolation.marked(marker) == []
        assert exposure_check(namespace, config).returncode == 0
        assert listening(sockets(namespace)) == []

    def test_a_daemon_killed_with_sigkill_takes_its_calls_with_it(
        self, namespace: netns.Namespace, marker: str
    ) -> None:
        """kill -9 of the process that runs the supervisor, mid-call: the call's process
        follows it, and its PID namespace with everything the call left running."""
        driver = Driver(namespace, marker)
        try:
            driver.read()
            alive = isolation.marked(marker)
            driver.process.send_signal(signal.SIGKILL)
            driver.finish()
            deadline = time.monotonic() + SECONDS
            while isolation.marked(marker) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            driver.close()

        assert len(alive) >= 2
        assert isolation.marked(marker) == []
