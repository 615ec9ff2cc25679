"""The daemon's side of a `Type=notify` unit: readiness, status, stopping and the watchdog.

systemd passes `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket) and, with
`WatchdogSec=`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`. Without them (a terminal, launchd, the
tests) every call here does nothing, so the daemon never needs to know how it was started.

- `ready(status)`: `READY=1` with a `STATUS=` line, once the daemon serves.
- `status(text)`: a free-form `STATUS=` line (`systemctl status` shows it), e.g. while the
  console waits for the tailnet.
- `stopping()`: `STOPPING=1` when a drain begins.
- `watchdog()`: an async context manager that pings from the event loop every half
  `WatchdogSec`, so a blocked loop (not merely a live process) stops the pings and systemd
  kills and restarts the daemon. Before `READY=1` the same pings send
  `EXTEND_TIMEOUT_USEC=<WatchdogSec>` instead: a start that waits (for Postgres, for the
  tailnet) is allowed as long as the loop turns, and one whose loop hangs times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _State:
    ready: bool = False


_state = _State()


def notify(*fields: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `KEY=value` fields to systemd in one datagram; False when not under systemd."""
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET", "")
    if not target or not fields:
        return False
    address = "\0" + target[1:] if target.startswith("@") else target
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError as exc:  # systemd went away (shutdown): nothing to tell anyone
        log.warning("systemd notify failed: %s", exc, extra={"event": "systemd.notify_failed"})
        return False
    return True


def ready(status: str) -> None:
    """The daemon serves: `READY=1` and what it serves."""
    _state.ready = True
    notify("READY=1", f"STATUS={_one_line(status)}")


def status(text: str) -> None:
    """A status line for `systemctl status` (e.g. why the console waits)."""
    notify(f"STATUS={_one_line(text)}")


def stopping() -> None:
    """A drain begins."""
    notify("STOPPING=1", "STATUS=stopping: draining running tasks")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of `WatchdogSec`), or None when no watchdog is set for us."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):  # meant for another process (we were exec'd by it)
        return None
    return int(usec) / 1_000_000 / 2


@contextlib.asynccontextmanager
async def watchdog(environ: Mapping[str, str] | None = None) -> AsyncIterator[None]:
    """Ping systemd's watchdog from this event loop for as long as the block runs."""
    env = dict(os.environ if environ is None else environ)
    interval = watchdog_interval(env)
    _state.ready = False
    if interval is None:
        yield
        return
    pinger = asyncio.create_task(_ping(interval, env), name="systemd.watchdog")
    try:
        yield
    finally:
        pinger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pinger


async def _ping(interval: float, environ: Mapping[str, str]) -> None:
    extend = f"EXTEND_TIMEOUT_USEC={int(interval * 2 * 1_000_000)}"
    while True:
        notify("WATCHDOG=1" if _state.ready else extend, environ=environ)
        await asyncio.sleep(interval)


def _one_line(text: str) -> str:
    return " ".join(text.split())
