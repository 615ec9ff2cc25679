"""Who is behind a tailnet peer's address: `tailscale whois`, remembered for a short while.

A listener on the tailnet addresses asks this for every request it must attribute. One CLI
run per address per `ttl` seconds at most: the answer (a person's node, a tagged device, or no
node at all) is kept by IP address, not by port (a node's connections come from many ports).
Concurrent requests from one address wait for the same run. A failure to ask (tailscaled
down, the CLI missing or timing out) is not remembered: it raises, and the next request asks
again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable

from appliance.mesh import tailscale

MAX_REMEMBERED = 1024  # addresses kept; past this the expired ones are dropped, then all


class Peers:
    """Identities of tailnet peers by address, through `mesh`, each kept `ttl` seconds."""

    def __init__(
        self,
        mesh: tailscale.Tailscale,
        *,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._mesh = mesh
        self._ttl = ttl
        self._clock = clock
        self._known: dict[tailscale.IP, tuple[float, tailscale.Identity | None]] = {}
        self._asking: dict[tailscale.IP, asyncio.Future[tailscale.Identity | None]] = {}

    async def identify(self, ip: str, port: int) -> tailscale.Identity | None:
        """The node at `ip` (its connection's `port`), or None when no tailnet node has it.

        Raises `tailscale.TailscaleError` (a dependency error) when tailscaled cannot say."""
        address = ipaddress.ip_address(ip)
        now = self._clock()
        known = self._known.get(address)
        if known is not None and known[0] > now:
            return known[1]
        pending = self._asking.get(address)
        if pending is None:
            pending = asyncio.ensure_future(self._ask(address, port))
            self._asking[address] = pending
            pending.add_done_callback(lambda _: self._asking.pop(address, None))
        return await asyncio.shield(pending)

    async def _ask(self, address: tailscale.IP, port: int) -> tailscale.Identity | None:
        try:
            identity: tailscale.Identity | None = await self._mesh.whois(str(address), port)
        except tailscale.PeerNotFoundError:
            identity = None
        self._remember(address, identity)
        return identity

    def _remember(self, address: tailscale.IP, identity: tailscale.Identity | None) -> None:
        now = self._clock()
        if len(self._known) >= MAX_REMEMBERED:
            self._known = {key: item for key, item in self._known.items() if item[0] > now}
            if len(self._known) >= MAX_REMEMBERED:
                self._known.clear()
        self._known[address] = (now + self._ttl, identity)
