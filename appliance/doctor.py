"""`appliance doctor`: each check says ok or fail, and how to fix what fails."""

from __future__ import annotations

import dataclasses
import os
import pwd

from appliance import errors, settings
from appliance.db import audit as dbaudit
from appliance.db import connection, embedded, migrations
from appliance.db import outbox as dboutbox
from appliance.db import tenants as dbtenants
from appliance.mesh import exposure, listeners, tailscale


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


async def run_checks(config: settings.Settings) -> list[Check]:
    """Every check, in the order a person would fix them."""
    checks = [_state_dir(config)]
    if config.embedded:
        checks.extend(_embedded(config))
    checks.extend(await _database(config))
    if config.health.host == settings.TAILNET:
        checks.append(await _tailnet(config))
    checks.append(_exposure(config))
    return checks


async def _tailnet(config: settings.Settings) -> Check:
    mesh = tailscale.Tailscale(config.mesh.tailscale, timeout=config.mesh.command_timeout_seconds)
    try:
        status = await mesh.status()
    except errors.ApplianceError as exc:
        return Check("tailnet", False, exc.message.splitlines()[0], "install and start tailscaled")
    if not status.ready:
        return Check(
            "tailnet",
            False,
            f"tailscaled is {status.backend_state}: the console waits for it",
            "appliance init --tailnet-auth-key-file FILE",
        )
    addresses = ", ".join(str(ip) for ip in status.ips)
    return Check("tailnet", True, f"{status.dns_name or status.hostname} at {addresses}")


def _exposure(config: settings.Settings) -> Check:
    public = [config.ingress.port] if config.ingress.enabled else []
    try:
        passed, text = exposure.run_check(listeners.policy_of(config, public), box_wide=True)
    except errors.ApplianceError as exc:
        return Check("exposure", False, exc.message, "run doctor where /proc is readable")
    if passed:
        return Check("exposure", True, "nothing but the webhook port listens on a wildcard")
    offending = [line for line in text.splitlines() if line.startswith("FAIL ")]
    return Check(
        "exposure",
        False,
        "; ".join(" ".join(line.split()[1:3]) for line in offending),
        "bind it to the tailnet address or 127.0.0.1 (appliance exposure-check names the process)",
    )


def _state_dir(config: settings.Settings) -> Check:
    folder = config.state_dir
    if not folder.is_dir():
        return Check("state dir", False, f"{folder} does not exist", "run `appliance init`")
    if not os.access(folder, os.W_OK | os.X_OK):
        return Check(
            "state dir", False, f"{folder} is not writable", "chown it to the service user"
        )
    return Check("state dir", True, str(folder))


def _embedded(config: settings.Settings) -> list[Check]:
    checks = []
    try:
        found = embedded.find_binaries()
        checks.append(Check("postgres binaries", True, str(found)))
    except errors.PostgresBinariesMissingError as exc:
        checks.append(Check("postgres binaries", False, "not found", exc.message))
    if os.geteuid() == 0:
        user = config.database.embedded_user
        try:
            pwd.getpwnam(user)
            checks.append(Check("postgres user", True, f"embedded Postgres runs as {user}"))
        except KeyError:
            checks.append(
                Check(
                    "postgres user",
                    False,
                    f"user {user} does not exist (Postgres refuses to run as root)",
                    f"useradd --system --home-dir {config.state_dir} "
                    f"--shell /usr/sbin/nologin {user}",
                )
            )
    return checks


async def _outbox(db: connection.Database) -> Check:
    backlog = await dboutbox.count_pending_events(db.pool)
    detail = f"{backlog.pending} undelivered, {backlog.failing} failing"
    if backlog.pending:
        detail += f", oldest {backlog.oldest_seconds:.0f} s"
    if backlog.failing:
        return Check(
            "outbox",
            False,
            detail,
            "look at last_error in appliance.outbox_events; deliveries retry by themselves",
        )
    return Check("outbox", True, detail)


async def _database(config: settings.Settings) -> list[Check]:
    try:
        async with connection.open_database(config, start_cluster=False, pool_size=2) as db:
            checks = [Check("database", True, "reachable")]
            async with db.pool.acquire() as conn:
                status = await migrations.status(conn)
            if not status.current:
                pending = ", ".join(m.filename for m in status.pending)
                return [*checks, Check("schema", False, f"pending: {pending}", "appliance migrate")]
            checks.append(Check("schema", True, f"{len(status.applied)} migration(s) applied"))
            tenants = {t.tenant_id for t in await dbtenants.list_tenants(db.pool)}
            if config.default_tenant in tenants:
                checks.append(Check("default tenant", True, config.default_tenant))
            else:
                checks.append(
                    Check(
                        "default tenant",
                        False,
                        f"{config.default_tenant} does not exist",
                        "appliance init",
                    )
                )
            breaks = await dbaudit.find_chain_breaks(db.pool, limit=1)
            if breaks:
                first = breaks[0]
                checks.append(
                    Check(
                        "audit chain",
                        False,
                        f"{first.chain} #{first.seq}: {first.reason}",
                        "investigate: the audit log was altered outside the appliance",
                    )
                )
            else:
                checks.append(Check("audit chain", True, "verifies"))
            checks.append(await _outbox(db))
            return checks
    except errors.ApplianceError as exc:
        return [
            Check(
                "database",
                False,
                exc.message,
                "start the daemon (embedded Postgres) or check database.url",
            )
        ]
