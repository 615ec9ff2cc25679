"""The packaged appliance inside a booted box (tests/support/box.py): how the tests talk to it.

Commands go through the package's own `appliance` wrapper as root, as an operator's would;
waits poll a condition inside the box with a deadline. Where the console listens is set in
`CONSOLE` and nowhere else: the probes take its address from the daemon's own `daemon.ready`
log line, so the same tests hold once the console binds the tailnet address.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.support import box

T = TypeVar("T")
WAIT_SECONDS = 120.0
DROP_IN = "/etc/systemd/system/appliance.service.d/50-test.conf"
# Where the console listens in the box, and nothing else of the test depends on it: the probes
# below take the address from the daemon's own `daemon.ready` log line. Before provisioning
# exists it is loopback; the tailnet path installs tests/support/bin/tailscale into the box as
# /usr/bin/tailscale and leaves health.host at its default, `tailnet`.
CONSOLE = {"APPLIANCE_HEALTH__HOST": "127.0.0.1"}
SETTINGS = {**CONSOLE, "APPLIANCE_ENGINE__WORKFLOW_MODULES": json.dumps(["boxprobe"])}


async def configure(machine: box.Box, settings: dict[str, str]) -> None:
    """The test's settings as a drop-in of appliance.service (reloaded, not restarted)."""
    lines = "".join(f"Environment='{key}={value}'\n" for key, value in settings.items())
    await machine.run("mkdir", "-p", str(Path(DROP_IN).parent))
    await machine.run("sh", "-c", f"cat > {DROP_IN}", stdin=f"[Service]\n{lines}".encode())
    await machine.run("systemctl", "daemon-reload")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, what: str, timeout: float = WAIT_SECONDS
) -> T:
    """Poll a condition inside the box until it holds (a value other than None/False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await probe()
        if found is not None and found is not False:
            return found
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.25)


async def unit(machine: box.Box, *properties: str) -> dict[str, str]:
    shown = await machine.run(
        "systemctl", "show", "appliance.service", *(f"--property={p}" for p in properties)
    )
    return dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)


async def appliance(
    machine: box.Box, *args: str, check: bool = True, settings: dict[str, str] | None = None
) -> box.Result:
    """`appliance ...` in the box as root: the packaged wrapper runs it as the service user.
    With `settings` (default SETTINGS) as environment overrides, as the daemon has them."""
    env = [f"{key}={value}" for key, value in (SETTINGS if settings is None else settings).items()]
    return await machine.run("env", *env, "appliance", *args, check=check)


async def task(machine: box.Box, task_id: int) -> dict[str, Any]:
    shown = await appliance(machine, "--json", "task", "show", str(task_id), settings=CONSOLE)
    found: dict[str, Any] = json.loads(shown.stdout)
    return found


async def finished(machine: box.Box, task_id: int) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        found = await task(machine, task_id)
        return found if found["state"] in ("succeeded", "failed", "cancelled") else None

    return await eventually(ended, what=f"task {task_id} to end")


async def console_url(machine: box.Box) -> str:
    """The /readyz URL the running daemon announced in its newest `daemon.ready` line."""

    async def announced() -> str | None:
        journal = await machine.run(
            "journalctl", "--unit=appliance.service", "--output=cat", "--no-pager", "--boot"
        )
        ready = [line for line in journal.stdout.splitlines() if '"daemon.ready"' in line]
        found = re.findall(r"http://[^ ,\"]+/readyz", ready[-1]) if ready else []
        return found[0] if found else None

    return await eventually(announced, what="the daemon's ready line")


async def readyz(machine: box.Box) -> tuple[int, dict[str, Any]]:
    url = await console_url(machine)
    fetch = (
        "import json, sys, urllib.error, urllib.request\n"
        "try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=5)\n"
        "except urllib.error.HTTPError as e:\n    r = e\n"
        "print(r.status, r.read().decode())"
    )
    answer = await machine.run("python3", "-c", fetch, url)
    status, _, body = answer.stdout.strip().partition(" ")
    return int(status), json.loads(body)


async def active(machine: box.Box) -> dict[str, str]:
    async def started() -> dict[str, str] | None:
        shown = await unit(machine, "ActiveState", "SubState", "MainPID", "NRestarts")
        return shown if shown["ActiveState"] == "active" else None

    return await eventually(started, what="appliance.service to be active")
