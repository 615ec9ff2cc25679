"""Where the daemon listens, and the exposure gate over what it bound.

The console/API/metrics listener binds only to this node's tailnet addresses (or, explicitly for
development, one address such as 127.0.0.1). While the tailnet is not up it waits, says why once,
and binds as soon as tailscaled is Running with an address. After every bind the gate lists the
daemon's own listening sockets: one that is neither loopback, tailnet, the webhook ingress
socket itself nor allow-listed fails the daemon (exit 78) before it reports ready.

The ingress sockets are declared public by identity (`exposure.PublicSocket`: pid, inode or
descriptor), not by port. The daemon records them in `<state_dir>/public-sockets.json`, so
that `appliance exposure-check` and `doctor`, other processes, can tell the daemon's ingress
socket from another one on its port. A stale record (its pid gone, its inodes closed) matches
no socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from appliance import errors, settings
from appliance.mesh import exposure, sockets, tailscale

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0
PUBLIC_RECORD = "public-sockets.json"


def policy_of(
    config: settings.Settings, public: Collection[exposure.PublicSocket] = ()
) -> exposure.Policy:
    """The gate's policy: the daemon's public sockets and the configured allow-list."""
    return exposure.Policy(
        public=frozenset(public),
        allowed=frozenset(exposure.Allowance.parse(entry) for entry in config.mesh.allowed),
    )


def own_public_sockets(addresses: Sequence[Any]) -> frozenset[exposure.PublicSocket]:
    """This process's TCP listeners at `addresses` (an aiohttp runner's `addresses`).

    Each bound address names one listener of ours; were there two (SO_REUSEPORT), neither is
    declared, and the gate names both.
    """
    own = sockets.listening_sockets(own_only=True)
    found: set[exposure.PublicSocket] = set()
    for bound in addresses:
        host, port = str(bound[0]).partition("%")[0], int(bound[1])
        address = ipaddress.ip_address(host)
        same = [
            item
            for item in own
            if item.family == "tcp" and item.address == address and item.port == port
        ]
        if len(same) == 1:
            (item,) = same
            found.add(
                exposure.PublicSocket(
                    pid=os.getpid(),
                    protocol=item.protocol,
                    address=item.address,
                    port=item.port,
                    inode=item.inode,
                    fd=item.fd,
                )
            )
    return frozenset(found)


def record_public_sockets(state_dir: Path, public: Collection[exposure.PublicSocket]) -> None:
    """Write the record `exposure-check` and `doctor` read; a warning when it cannot be."""
    path = state_dir / PUBLIC_RECORD
    text = json.dumps({"sockets": [item.as_json() for item in sorted(public, key=str)]})
    staging = path.with_name(f".{PUBLIC_RECORD}.{os.getpid()}")
    try:
        staging.write_text(text + "\n", encoding="utf-8")
        staging.replace(path)
    except OSError as exc:
        log.warning(
            "cannot record the public sockets in %s (%s): exposure-check will take the "
            "ingress port for another listener",
            path,
            exc.strerror,
            extra={"event": "exposure.unrecorded"},
        )


def recorded_public_sockets(
    state_dir: Path,
) -> tuple[frozenset[exposure.PublicSocket], tuple[str, ...]]:
    """The daemon's record of its public sockets, and a note when it cannot be read."""
    path = state_dir / PUBLIC_RECORD
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return frozenset(exposure.PublicSocket.from_json(item) for item in data["sockets"]), ()
    except FileNotFoundError:
        return frozenset(), ()
    except OSError as exc:
        problem = exc.strerror or str(exc)
    except (ValueError, KeyError, TypeError) as exc:
        problem = f"not a record of public sockets ({exc})"
    return frozenset(), (
        f"cannot read {path}: {problem}; the daemon's ingress socket cannot be told from "
        "another listener on its port (run as root or as the service user)",
    )


def configured_policy(config: settings.Settings) -> tuple[exposure.Policy, tuple[str, ...]]:
    """The policy for a process other than the daemon (exposure-check, doctor): the daemon's
    recorded ingress sockets when the ingress is enabled, and notes on what could not be read."""
    public: frozenset[exposure.PublicSocket] = frozenset()
    notes: tuple[str, ...] = ()
    if config.ingress.enabled:
        public, notes = recorded_public_sockets(config.state_dir)
    return policy_of(config, public), notes


class Console:
    """The console listener: an aiohttp app bound to the tailnet addresses or a given host."""

    def __init__(
        self,
        app: web.Application,
        *,
        host: str,
        port: int,
        policy: exposure.Policy,
        mesh: tailscale.Tailscale | None,
        on_waiting: Callable[[str], None],
        serve_socket: Path | None = None,
    ) -> None:
        # A client that goes away cancels its handler (an event stream ends at once).
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        self._serve_socket = serve_socket
        self._host = host
        self._port = port
        self.policy = policy
        self._mesh = mesh
        self._on_waiting = on_waiting
        self._task: asyncio.Task[None] | None = None
        self.bound = asyncio.Event()
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.addresses: list[str] = []

    async def start(self) -> None:
        """Bind now when the addresses are known, else wait for the tailnet in the background;
        the `tailscale serve` unix socket, if configured, at once."""
        await self._runner.setup()
        if self._serve_socket is not None:
            await self._bind_unix(self._serve_socket)
        if self._host != settings.TAILNET:
            await self._bind([self._host])
            return
        if self._mesh is None:
            raise errors.ConfigError("health.host is 'tailnet' but no tailscale CLI is configured")
        self._task = asyncio.create_task(self._bind_when_tailnet_is_up(), name="console.tailnet")

    def current_policy(self) -> exposure.Policy:
        """The gate's policy as it stands (the ingress declares its sockets after start)."""
        return self.policy

    @property
    def port(self) -> int:
        for address in self._runner.addresses:
            if isinstance(address, tuple):  # not the serve socket's path
                return int(address[1])
        return 0

    async def _bind_when_tailnet_is_up(self) -> None:
        mesh = self._mesh
        if mesh is None:
            return
        said = ""
        while True:
            try:
                status = await mesh.status()
                if status.ready:
                    await self._bind([str(ip) for ip in status.ips])
                    return
                reason = f"waiting for the tailnet (tailscaled is {status.backend_state})"
            except errors.ConfigError as exc:  # the gate refused, or the address cannot be bound
                if not self.failed.done():
                    self.failed.set_exception(exc)
                return
            except errors.ApplianceError as exc:
                reason = f"waiting for the tailnet ({exc.message})"
            if reason != said:
                log.warning("%s", reason, extra={"event": "console.waiting_for_tailnet"})
                self._on_waiting(reason)
                said = reason
            try:
                await mesh.wait(RETRY_SECONDS)
            except errors.ApplianceError:
                # tailscaled (or its CLI) is not there: a failed call may not even yield to the
                # event loop, so sleep before asking again.
                await asyncio.sleep(RETRY_SECONDS)

    async def _bind(self, hosts: list[str]) -> None:
        for host in hosts:
            site = web.TCPSite(self._runner, host, self._port)
            try:
                await site.start()
            except OSError as exc:
                raise errors.ConfigError(
                    f"cannot listen on {host}:{self._port}: {exc.strerror}"
                ) from exc
            if self._port == 0:
                self._port = self.port
        self.addresses = [f"{host}:{self.port}" for host in hosts]
        exposure.gate_own_sockets(self.policy)
        log.info(
            "console listening on %s",
            ", ".join(self.addresses),
            extra={"event": "console.listening", "addresses": self.addresses},
        )
        self.bound.set()

    async def _bind_unix(self, path: Path) -> None:
        """The socket `tailscale serve unix:PATH` proxies to: its owner only (tailscaled runs
        as root); a stale socket file from an earlier run is replaced."""
        with contextlib.suppress(FileNotFoundError):
            if path.is_socket():
                path.unlink()
        site = web.UnixSite(self._runner, str(path))
        try:
            await site.start()
            path.chmod(0o600)
        except OSError as exc:
            raise errors.ConfigError(
                f"console.serve_socket: cannot listen on {path}: {exc.strerror}"
            ) from exc
        log.info(
            "console listening on %s (for tailscale serve)",
            path,
            extra={"event": "console.listening_unix", "path": str(path)},
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._runner.cleanup()
