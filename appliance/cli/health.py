"""`appliance health`: the running daemon's readiness, for an orchestrator's probe.

It asks the daemon's own `/readyz` at the configured health address, so what it says is what
the daemon knows (Postgres reachable, schema current, not shutting down, nothing exposed):
exit 0 ready; 1 not ready, with the reasons on one line; 69 nothing answers there; 78 there is
no address to ask (a VPC worker not given one, or `health.port = 0`).
"""

from __future__ import annotations

import argparse
import ipaddress

from appliance import errors, health, settings
from appliance.cli import output
from appliance.mesh import listeners, tailscale

PROBE_SECONDS = 5.0


async def readiness_url(config: settings.Settings) -> str:
    """The daemon's /readyz: its health address (a tailnet one asked of tailscale)."""
    host = listeners.health_host(config)
    if host is None:
        raise errors.ConfigError(
            "this worker has no health listener: give it a private address and a port "
            '(health.host = "127.0.0.1", or its VPC address; health.port = 8470)'
        )
    if config.health.port == 0:
        raise errors.ConfigError(
            "health.port is 0: the daemon takes a free port at each start, which a probe "
            "cannot know; set health.port"
        )
    if host == settings.TAILNET:
        mesh = tailscale.Tailscale(
            config.mesh.tailscale, timeout=config.mesh.command_timeout_seconds
        )
        status = await mesh.status()
        if not status.ready or not status.ips:
            raise errors.DependencyError(
                f"the tailnet is not up (tailscaled is {status.backend_state}): the daemon's "
                "health listener waits for it"
            )
        host = str(status.ips[0])
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return f"http://{host}:{config.health.port}/readyz"  # a name, such as localhost
    if address.is_unspecified:  # listening everywhere: ask over loopback
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    where = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{where}:{config.health.port}/readyz"


async def cmd_health(args: argparse.Namespace, config: settings.Settings) -> int:
    """Exit 0 when the running daemon is ready; else one line saying why."""
    found = await health.probe(await readiness_url(config), timeout=PROBE_SECONDS)
    if args.json:
        output.emit_json(found.as_json())
    elif found.ready:
        output.out(f"ready ({found.url})")
    found.check()
    return 0
