"""The one public port as the daemon serves it: intake, listener, the exposure gate, the record.

`serving` opens the webhook port (when `ingress.enabled`), declares its sockets public by
identity, runs the exposure gate over everything the process listens on, and records the
sockets for `exposure-check` and `doctor`; on exit the port and the intake close. The
console's gate (at its bind, and rechecking) knows the port's sockets from then on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

from appliance import errors, settings
from appliance.db import pool as dbpool
from appliance.engine import registry
from appliance.ingress import credentials, guard, public, webhooks
from appliance.ingress import intake as ingress_intake
from appliance.mesh import exposure, listeners

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Ingress:
    """The public webhook port (when enabled) and the gate's policy that declares it."""

    policy: exposure.Policy
    listener: public.Listener | None

    @property
    def port(self) -> int:
        return self.listener.port if self.listener is not None else 0


@contextlib.asynccontextmanager
async def serving(
    config: settings.Settings,
    pool: dbpool.Pool,
    workflows: registry.Registry,
    verifiers: credentials.Verifiers,
    listener: listeners.Console | None,
) -> AsyncIterator[Ingress]:
    """The one public port, then the exposure gate over everything this process listens on;
    the console's gate (at its bind, and rechecking) knows the port's sockets from then on."""
    if not config.ingress.enabled:
        if config.mode == "ingress":
            raise errors.ConfigError(
                "mode = 'ingress' serves only the webhook port: set ingress.enabled and sources"
            )
        policy = listeners.policy_of(config)
        exposure.gate_own_sockets(policy)
        yield Ingress(policy, None)
        return
    intake = ingress_intake.DurableIntake(pool, workflows, config.engine)
    intake.check(config.ingress.sources)
    limits = _public_limits(config)
    endpoint = webhooks.Endpoint(config.ingress, intake, verifiers=verifiers)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(intake.close)
        try:
            opened = await public.listen(
                endpoint, host=config.ingress.host, port=config.ingress.port, limits=limits
            )
        except OSError as exc:
            raise errors.ConfigError(
                f"ingress: cannot listen on {config.ingress.host}:{config.ingress.port}: "
                f"{exc.strerror}"
            ) from exc
        stack.push_async_callback(opened.close)
        public_sockets = listeners.own_public_sockets(opened.addresses)
        policy = listeners.policy_of(config, public_sockets)
        if listener is not None:
            listener.policy = policy
        exposure.gate_own_sockets(policy)
        listeners.record_public_sockets(config.state_dir, public_sockets)
        log.info(
            "webhooks on %s:%d (%d source(s), at most %d connections, %d per address)",
            config.ingress.host,
            opened.port,
            len(config.ingress.sources),
            limits.connections,
            limits.per_address,
            extra={
                "event": "ingress.listening",
                "port": opened.port,
                "max_connections": limits.connections,
                "max_connections_per_address": limits.per_address,
            },
        )
        yield Ingress(policy, opened)


def _public_limits(config: settings.Settings) -> public.Limits:
    """The public port's limits, its connection cap fitted under the open-files limit."""
    configured = config.ingress.max_connections
    cap, limit = guard.fitted_connection_cap(configured, pool_max=config.database.pool_max)
    if cap < guard.MINIMUM_CONNECTIONS:
        raise errors.ConfigError(
            f"ingress: the open-files limit ({limit}) leaves room for {cap} public connections; "
            "raise it (LimitNOFILE= in the unit, or ulimit -n)"
        )
    if cap < configured:
        log.warning(
            "ingress.max_connections lowered from %d to %d to fit the open-files limit (%d)",
            configured,
            cap,
            limit,
            extra={"event": "ingress.connections_lowered", "max_connections": cap},
        )
    return public.Limits.of(config.ingress, connections=cap)
