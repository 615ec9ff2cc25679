"""Where the daemon listens, and the exposure gate over what it bound.

The console/API/metrics listener binds only to this node's tailnet addresses (or, explicitly for
development, one address such as 127.0.0.1). While the tailnet is not up it waits, says why once,
and binds as soon as tailscaled is Running with an address. After every bind the gate lists the
daemon's own listening sockets: a wildcard socket other than the declared public port fails the
daemon (exit 78) before it reports ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from aiohttp import web

from appliance import errors, settings
from appliance.mesh import exposure, tailscale

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0


def policy_of(config: settings.Settings, public_ports: Sequence[int] = ()) -> exposure.Policy:
    """The gate's policy: the public TCP port(s) of the ingress and the configured allow-list."""
    allowed: set[tuple[exposure.Family, int]] = set()
    for entry in config.mesh.allowed:
        protocol, _, port = entry.partition("/")
        allowed.add(("tcp" if protocol == "tcp" else "udp", int(port)))
    return exposure.Policy(
        public=frozenset(("tcp", port) for port in public_ports if port),  # 0: not bound yet
        allowed=frozenset(allowed),
    )


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
    ) -> None:
        self._runner = web.AppRunner(app, access_log=None)
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
        """Bind now when the addresses are known, else wait for the tailnet in the background."""
        await self._runner.setup()
        if self._host != settings.TAILNET:
            await self._bind([self._host])
            return
        if self._mesh is None:
            raise errors.ConfigError("health.host is 'tailnet' but no tailscale CLI is configured")
        self._task = asyncio.create_task(self._bind_when_tailnet_is_up(), name="console.tailnet")

    @property
    def port(self) -> int:
        for address in self._runner.addresses:
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

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._runner.cleanup()
