"""`appliance doctor`: each check says ok, warn or fail, and how to fix what is not ok.

A failed check (severity `fail`) means something does not work: doctor exits 1. A warning
(severity `warn`) is something that works but should be put right, such as a secret past its
rotation schedule or a signing secret left in the config file: shown, exit 0, so an install
script or a monitor that runs doctor does not stop on a reminder.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import pwd
from typing import Literal

from appliance import backup, errors, master_key, outgoing_webhooks, provisioning, settings, vault
from appliance.db import audit as dbaudit
from appliance.db import connection, embedded, migrations, tls
from appliance.db import grants as dbgrants
from appliance.db import outbox as dboutbox
from appliance.db import outgoing_webhooks as dbwebhooks
from appliance.db import pool as dbpool
from appliance.db import tenants as dbtenants
from appliance.ingress import credentials
from appliance.isolation import confinement
from appliance.mesh import exposure, listeners, tailscale


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    severity: Literal["fail", "warn"] = "fail"  # what it means when not ok

    @property
    def failed(self) -> bool:
        """Not ok, and not a mere warning."""
        return not self.ok and self.severity == "fail"


async def run_checks(config: settings.Settings) -> list[Check]:
    """Every check, in the order a person would fix them."""
    checks = [_state_dir(config)]
    if config.embedded:
        checks.extend(_embedded(config))
    if config.database.url is not None:
        checks.append(_database_tls(config.database, config.database.url.get_secret_value()))
    checks.extend(await _database(config))
    checks.extend(_inline_signing_secrets(config))
    checks.append(_isolation(config))
    if config.mode != "worker":  # a VPC worker uses no tailnet, and its host is not the box's
        checks.extend(_provisioning_file(config))
        if config.health.host == settings.TAILNET:
            checks.append(await _tailnet(config))
        checks.append(_exposure(config))
    checks.extend(_backups(config))
    return checks


_VERIFY_FULL_FIX = (
    'set database.sslmode = "verify-full" and database.sslrootcert to the CA file that signs '
    "the server's certificate (a managed Postgres publishes its CA bundle)"
)


def _database_tls(database: settings.DatabaseSettings, url: str) -> Check:
    """How connections to database.url are secured: verify-full is ok; anything that lets
    another server pose as this one (or the traffic go in the clear) is a warning."""
    try:
        found = tls.effective(url, database)
    except errors.ConfigError as exc:
        return Check(
            "database tls", False, exc.message, "keep sslmode and sslrootcert in one place"
        )
    if not found.remote:
        return Check("database tls", True, f"{found.address} is this machine ({found.describe()})")
    if found.mode == "verify-full":
        return Check(
            "database tls",
            True,
            f"{found.describe()}: {found.address} must show a certificate from that CA, naming it",
        )
    if found.mode == "verify-ca":
        risk = (
            "the certificate's CA is checked, not the host it names: any server holding a "
            "certificate from that CA can pose as this one"
        )
    elif found.mode == "require":
        risk = (
            "encrypted, but the server is not verified (its host name is never checked, its CA "
            "only with a CA file): anyone on the path can pose as it and read what the "
            "appliance sends"
        )
    else:
        risk = "the traffic may go in the clear, passwords and task data included"
    return Check(
        "database tls",
        False,
        f"{found.describe()} to {found.address}: {risk}",
        _VERIFY_FULL_FIX,
        severity="warn",
    )


def _isolation(config: settings.Settings) -> Check:
    """Whether this host can confine tool processes as `isolation.strict` demands."""
    found = confinement.capabilities()
    missing = [layer for layer in confinement.LAYERS if found.get(layer) is False]
    detail = f"landlock ABI {found.get('landlock_abi', 0)}; " + (
        f"missing: {', '.join(missing)}" if missing else "every layer applies"
    )
    if not missing:
        return Check("tool isolation", True, detail)
    if config.isolation.strict:
        return Check(
            "tool isolation",
            False,
            detail + "; tool calls and isolated steps will be refused",
            "use a kernel with Landlock ABI 6 (Linux 6.12+), seccomp and user namespaces "
            "(user, mount and PID may be created; no part of /proc covered, as systemd's "
            "ProtectKernelTunables= and ProtectKernelLogs= do), or set isolation.strict = false "
            "to run tools less confined",
        )
    return Check(
        "tool isolation",
        False,
        detail + "; isolation.strict = false: tools run less confined",
        "use a host that supports every layer, then set isolation.strict = true",
        severity="warn",
    )


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
            _PROVISION_FIX,
        )
    addresses = ", ".join(str(ip) for ip in status.ips)
    return Check("tailnet", True, f"{status.dns_name or status.hostname} at {addresses}")


_PROVISION_FIX = (
    "appliance provision FILE (a provisioning file: provisioning/README.md), or drop it at "
    "/etc/appliance/provision.toml and restart the daemon"
)


def _provisioning_file(config: settings.Settings) -> list[Check]:
    """A provisioning file waiting to be consumed: whether it will be (nothing when none)."""
    found = provisioning.candidates(config)
    if not found:
        return []
    try:
        path = provisioning.the_one(found)
        plan = provisioning.read(path)
    except provisioning.ProvisioningFileError as exc:
        return [
            Check(
                "provisioning file",
                False,
                exc.message,
                "correct it (provisioning/provision.example.toml shows every field), then "
                "appliance provision FILE",
            )
        ]
    return [
        Check(
            "provisioning file",
            True,
            f"{path} waits to be consumed (admin {plan.admin.login}, "
            f"{len(plan.tenants)} tenant(s)): at the daemon's next start, or now with "
            "appliance provision",
        )
    ]


async def _console_people(config: settings.Settings, pool: dbpool.Pool) -> Check:
    """Someone holds a console role: in the config, the tailnet policy or the database."""
    stored = await dbgrants.list_all_console_grants(pool)
    logins = {g.login for g in config.console.grants} | {g.login for g in stored}
    if logins:
        return Check("console people", True, f"roles for {', '.join(sorted(logins))}")
    if config.console.capability:
        return Check(
            "console people", True, f"roles come from the capability {config.console.capability}"
        )
    return Check(
        "console people",
        False,
        "nobody holds a console role: every person on the tailnet is refused",
        "appliance provision FILE (its admin.login becomes admin of every tenant), or a "
        "[[console.grants]] entry in the config file",
    )


def _exposure(config: settings.Settings) -> Check:
    """Every listening socket of the box: loopback, tailnet, the daemon's ingress socket, or
    allow-listed; a failure names each other one with its holder (pid and process)."""
    policy, notes = listeners.configured_policy(config)
    try:
        result = exposure.run_check(policy, box_wide=True, notes=notes)
    except errors.ApplianceError as exc:
        return Check("exposure", False, exc.message, "run doctor where /proc is readable")
    if result.passed:
        return Check(
            "exposure",
            True,
            f"{len(result.sockets)} listening sockets: none faces outside the tailnet but the "
            "webhook ingress and the allow-listed",
        )
    offenders = "; ".join(item.describe() for item in result.violations)
    return Check(
        "exposure",
        False,
        f"reachable from outside the tailnet: {offenders}" + "".join(f" ({n})" for n in notes),
        "bind each to the tailnet address or 127.0.0.1, or stop it; allow a listener you "
        "accept as mesh.allowed protocol/port@process (appliance exposure-check lists them all)",
    )


BACKUP_STALE = dt.timedelta(hours=48)  # the timer makes one a night


def _backups(config: settings.Settings) -> list[Check]:
    """The newest backup's age, and whether this box's vault key opens its secrets."""
    found = [(b, b.manifest) for b in backup.list_backups(config) if b.manifest is not None]
    if not found:
        return [
            Check(
                "backup",
                False,
                f"no backup in {backup.folder(config)}",
                "appliance backup create (the appliance-backup.timer unit makes one nightly)",
                severity="warn",
            )
        ]
    newest, manifest = found[0]
    age = dt.datetime.now(dt.UTC) - manifest.created_at
    checks = [
        Check(
            "backup",
            age <= BACKUP_STALE,
            f"newest {newest.path.name}, {_duration(age)} old",
            "appliance backup create; is appliance-backup.timer enabled?",
            severity="warn",
        )
    ]
    if manifest.vault_key_fingerprint is not None:
        try:
            offered = vault.fingerprint(vault.configured_key(config))
            reason = f"this box's key is {offered}"
        except errors.ApplianceError as exc:
            offered, reason = None, exc.message.splitlines()[0]
        if offered == manifest.vault_key_fingerprint:
            checks.append(Check("backup key", True, "this box's vault key opens its secrets"))
        else:
            checks.append(
                Check(
                    "backup key",
                    False,
                    f"its secrets need the vault key {manifest.vault_key_fingerprint}; {reason}",
                    "keep the key that made it (README: Install on a box, the vault key), "
                    "or make a new backup: appliance backup create",
                )
            )
    return checks


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


async def check_outgoing_webhooks(config: settings.Settings, pool: dbpool.Pool) -> list[Check]:
    """Each outgoing webhook: its secret in the vault, its queue's backlog and failures; and
    deliveries left waiting for an endpoint the config no longer has."""
    backlogs = {b.endpoint: b for b in await dbwebhooks.count_webhook_backlog(pool)}
    stored = {
        (s.integration, s.workflow, s.name)
        for s in await vault.list_secrets(pool, tenant_id=config.default_tenant)
    }
    checks = []
    for webhook in config.outbox.webhooks:
        name = f"webhook {webhook.name}"
        scope = (outgoing_webhooks.INTEGRATION, vault.WILDCARD, webhook.secret_ref.split("/", 1)[1])
        if scope not in stored:
            checks.append(
                Check(
                    name,
                    False,
                    f"{webhook.secret_ref} is not in the vault: the daemon will not start",
                    outgoing_webhooks.set_command(config, webhook),
                )
            )
            continue
        backlog = backlogs.pop(webhook.name, None)
        if backlog is None:
            checks.append(Check(name, True, f"{webhook.url}: nothing waiting"))
            continue
        detail = (
            f"{webhook.url}: {backlog.pending} undelivered, {backlog.failing} failing, oldest "
            f"{backlog.oldest_seconds:.0f} s"
        )
        if backlog.failing:
            checks.append(
                Check(
                    name,
                    False,
                    f"{detail}; last error: {backlog.last_error}",
                    "make the endpoint answer 2xx; deliveries retry by themselves, in order",
                )
            )
        else:
            checks.append(Check(name, True, detail))
    checks.extend(
        Check(
            f"webhook {left.endpoint}",
            False,
            f"not configured any more, and {left.pending} deliveries wait for it",
            f"configure it again in [[outbox.webhooks]] (name = {left.endpoint!r}), or delete "
            "its rows from appliance.outgoing_deliveries",
            severity="warn",
        )
        for left in backlogs.values()
    )
    return checks


async def _database(config: settings.Settings) -> list[Check]:
    try:
        async with connection.open_database(config, pool_size=2) as db:
            checks = [Check("database", True, "reachable")]
            async with db.pool.acquire() as conn:
                status = await migrations.status(conn)
            if not status.current:
                pending = ", ".join(m.filename for m in status.to_apply)
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
            if config.mode != "worker":
                checks.append(await _console_people(config, db.pool))
            checks.append(await _outbox(db))
            checks.extend(await check_outgoing_webhooks(config, db.pool))
            checks.append(await check_vault(config, db.pool))
            checks.append(await check_secret_rotation(db.pool))
            checks.extend(await _vault_signing_secrets(config, db.pool))
            return checks
    except errors.ApplianceError as exc:
        fix = "" if config.embedded else "check database.url (APPLIANCE_DATABASE__URL)"
        return [Check("database", False, exc.message, fix)]


async def check_vault(config: settings.Settings, pool: dbpool.Pool) -> Check:
    """The vault line: the key present, its mode, its fingerprint against the recorded one, and
    how many secrets are overdue for rotation."""
    state = await master_key.inspect(pool, config)
    overdue = len(await vault.overdue_secrets(pool))
    late = f"{overdue} secret(s) overdue for rotation" if overdue else "no secret overdue"
    mode = f" (mode {state.mode})" if state.mode else ""
    if state.expected is None:
        found = state.problem or f"{state.where}{mode} holds a key no vault records"
        return Check(
            "vault",
            False,
            f"not initialised, tools get no secrets: {found}",
            state.fix,
            severity="warn",
        )
    version = f"key version {state.expected.key_version}"
    if state.problem:
        return Check(
            "vault",
            False,
            f"{state.problem}; expected fingerprint {state.expected.fingerprint} ({version})",
            state.fix,
        )
    if state.fix:
        return Check(
            "vault",
            False,
            f"{state.where}{mode} holds a key of fingerprint {state.fingerprint}, expected "
            f"{state.expected.fingerprint} ({version}): the daemon will not start",
            state.fix,
        )
    return Check(
        "vault",
        True,
        f"{state.where}{mode}, fingerprint {state.fingerprint} matches {version}; {late}",
    )


async def check_secret_rotation(pool: dbpool.Pool) -> Check:
    """Secrets past their rotation schedule (scope and how late, never a value): a warning."""
    overdue = await vault.overdue_secrets(pool)
    if not overdue:
        return Check("secret rotation", True, "no secret is overdue")
    now = dt.datetime.now(dt.UTC)
    late = [
        f"{s.tenant_id}/{s.integration}/{s.workflow}/{s.name} overdue by "
        f"{_duration(now - s.due_at)}"
        for s in overdue
        if s.due_at is not None
    ]
    first = overdue[0]
    return Check(
        "secret rotation",
        False,
        f"{len(overdue)} overdue: " + "; ".join(late),
        f"appliance secrets rotate {first.integration} {first.name} --tenant {first.tenant_id}"
        f" --workflow '{first.workflow}' --from-file FILE (each overdue secret)",
        severity="warn",
    )


def _duration(delta: dt.timedelta) -> str:
    """`3d 4h`, `5h 12m`, `42m`: how late, to the minute."""
    minutes = max(0, int(delta.total_seconds() // 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"


def _inline_signing_secrets(config: settings.Settings) -> list[Check]:
    """A warning for each webhook source whose signing secret sits in the config file."""
    return [
        Check(
            f"webhook secret {source.tenant}/{source.name}",
            False,
            "signing secret in the config file",
            "move it to the vault with: "
            f"{credentials.set_command(source)} (one secret per line), then replace `secrets` "
            f'with secret_ref = "{credentials.INTEGRATION}/{source.name}"',
            severity="warn",
        )
        for source in config.ingress.sources
        if config.ingress.enabled and source.secret_ref is None
    ]


async def _vault_signing_secrets(config: settings.Settings, pool: dbpool.Pool) -> list[Check]:
    """Each source with a secret_ref: its secret is in the vault, or the daemon will not start."""
    checks = []
    for source in config.ingress.sources:
        if not config.ingress.enabled or source.secret_ref is None:
            continue
        stored = {
            (s.integration, s.workflow, s.name)
            for s in await vault.list_secrets(pool, tenant_id=source.tenant)
        }
        name = f"webhook secret {source.tenant}/{source.name}"
        if (credentials.INTEGRATION, vault.WILDCARD, credentials.vault_name(source)) in stored:
            checks.append(Check(name, True, f"in the vault ({source.secret_ref})"))
        else:
            checks.append(
                Check(
                    name,
                    False,
                    f"{source.secret_ref} is not in the vault: the daemon will not start",
                    credentials.set_command(source),
                )
            )
    return checks
