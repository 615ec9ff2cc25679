"""First boot: a provisioning file turns a fresh box into one on its tailnet, with tenants and
a first admin, unattended.

Where a box looks (`candidates`), in this order: `<state_dir>/provision.toml` (where the
packaged box's root step, appliance-provision.service, puts a file it found: `stage`), then every
pattern of `provisioning.paths` (/etc/appliance/provision.toml; appliance-provision.toml at the
root of a volume mounted under /media or /Volumes). Two files found at once is a refusal: which
one was meant is not ours to guess.

What consuming a file does (`provision`), in this order:

1. reads and checks the whole file (`read`): a bad one is refused in one line naming the file
   and the problem, never a value from it, and nothing is consumed;
2. in one transaction: the vault initialised if it never was, the auth key sealed in it as the
   default tenant's `tailscale auth-key` (where `appliance init` finds it again), the default
   tenant and the file's tenants created, the admin granted `admin` in each of them (console
   roles in Postgres, `appliance.console_grants`); every write audited, none repeated when it
   holds already, so a file consumed twice changes nothing the second time;
3. shreds the file (`shred`): overwritten with zeros in place, flushed, removed;
4. joins the tailnet through the `tailscale` CLI wrapper: `up` with the key in a private
   temporary file (never in argv, never logged), or `set` on a node that has joined already.
   On the packaged box the root step (`stage`) has joined before the daemon started
   (tailscaled lets root make it join, not the service user), and this finds nothing to do.

The console listener, waiting for the tailnet meanwhile, then binds the tailnet addresses and
runs the exposure gate; the daemon logs the console's URL and shows it in its systemd status
(`Provisioner`). A box that is not on its tailnet and has no file says so once, in the log and
its systemd status, and looks again every `provisioning.poll_seconds`: nothing listens outside
loopback meanwhile.

    ProvisioningFileError   65  the file cannot be used (unreadable, not TOML, a missing or bad
                                field, two files at once); nothing was consumed
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import glob
import logging
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import pydantic

from appliance import errors, master_key, settings, vault
from appliance.db import grants as dbgrants
from appliance.db import pool as dbpool
from appliance.db import tenants as dbtenants
from appliance.mesh import listeners, tailscale

log = logging.getLogger(__name__)

STAGED = "provision.toml"  # in the state directory
TAILNET_KEY_INTEGRATION = "tailscale"  # the vault scope `appliance init` reads the key from
TAILNET_KEY_NAME = "auth-key"
ADMIN_ROLE = "admin"
MAX_BYTES = 64 * 1024
_TENANT = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_LOGIN = re.compile(r"^[^\s@]+@[^\s@]+$")
_AUTH_KEY = re.compile(r"^tskey-(?:auth|client)-[A-Za-z0-9_-]+(?:\?[A-Za-z0-9=&_-]*)?$")
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,31}$|^[0-9]{1,4}$")
_TOML_POSITION = re.compile(r"\((at (?:line \d+, column \d+|end of document))\)$")


class ProvisioningFileError(errors.InputError):
    """The provisioning file cannot be used; nothing was consumed."""


# ---- the file ------------------------------------------------------------------------------------


class _Part(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")


class Tailnet(_Part):
    auth_key: pydantic.SecretStr = pydantic.Field(
        description="a Tailscale auth key (tskey-auth-...) or an OAuth client secret "
        "(tskey-client-...)"
    )

    @pydantic.field_validator("auth_key")
    @classmethod
    def _auth_key(cls, value: pydantic.SecretStr) -> pydantic.SecretStr:
        if not _AUTH_KEY.fullmatch(value.get_secret_value().strip()):
            raise ValueError("not a Tailscale auth key (tskey-auth-... or tskey-client-...)")
        return pydantic.SecretStr(value.get_secret_value().strip())


class Admin(_Part):
    login: str = pydantic.Field(description="the first admin's tailnet login (alice@example.com)")

    @pydantic.field_validator("login")
    @classmethod
    def _login(cls, value: str) -> str:
        if not _LOGIN.fullmatch(value):
            raise ValueError("not a tailnet login (alice@example.com, or alice@github)")
        return value


class Tenant(_Part):
    id: str = pydantic.Field(pattern=_TENANT, description="the tenant id (acme)")
    name: str | None = pydantic.Field(default=None, min_length=1, description="its display name")


class Plan(_Part):
    """What a provisioning file asks for."""

    tailnet: Tailnet
    admin: Admin
    tenants: tuple[Tenant, ...] = ()

    @pydantic.field_validator("tenants")
    @classmethod
    def _distinct(cls, value: tuple[Tenant, ...]) -> tuple[Tenant, ...]:
        seen: set[str] = set()
        for tenant in value:
            if tenant.id in seen:
                raise ValueError(f"tenant {tenant.id} is listed twice")
            seen.add(tenant.id)
        return value

    def tenant_names(self, default_tenant: str) -> dict[str, str]:
        """Every tenant the box gets, id -> name: the default tenant first, then the file's."""
        names = {default_tenant: default_tenant}
        names.update({t.id: t.name or t.id for t in self.tenants})
        return names


def candidates(config: settings.Settings) -> list[Path]:
    """Every provisioning file present now, in the order the box looks (symbolic links too,
    which `read` refuses)."""
    found: list[Path] = []
    patterns = [str(config.state_dir / STAGED), *config.provisioning.paths]
    for pattern in patterns:
        for name in sorted(glob.glob(pattern)):
            path = Path(name)
            if path not in found and (path.is_symlink() or path.is_file()):
                found.append(path)
    return found


def look_in(config: settings.Settings) -> str:
    """The places a box looks, for messages."""
    return ", ".join([str(config.state_dir / STAGED), *config.provisioning.paths])


def the_one(found: list[Path]) -> Path:
    """The only file found; ProvisioningFileError when there are several."""
    if len(found) > 1:
        raise ProvisioningFileError(
            f"{len(found)} provisioning files: {', '.join(map(str, found))}; keep one, "
            "nothing was consumed"
        )
    return found[0]


def read(path: Path) -> Plan:
    """The file's plan; ProvisioningFileError in one line naming the file and the problem."""
    return parse(_text(path), path)


def parse(text: str, path: Path) -> Plan:
    """The plan in `text`, read from `path` (named in errors)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = _TOML_POSITION.search(str(exc))
        raise ProvisioningFileError(
            f"provisioning file {path}: not valid TOML" + (f" ({where[1]})" if where else "")
        ) from None
    try:
        return Plan.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ProvisioningFileError(f"provisioning file {path}: {_problems(exc)}") from None


def _text(path: Path) -> str:
    """The file's text: a regular file (not a link) of at most MAX_BYTES, in UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the name is a symbolic link
            problem = "is a symbolic link; put the file itself there"
        else:
            problem = f"cannot be read: {exc.strerror}"
        raise ProvisioningFileError(f"provisioning file {path} {problem}") from None
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            raise ProvisioningFileError(f"provisioning file {path} is not a regular file")
        raw = stream.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise ProvisioningFileError(
            f"provisioning file {path} is larger than {MAX_BYTES // 1024} KiB"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProvisioningFileError(
            f"provisioning file {path}: not UTF-8 text (byte {exc.start})"
        ) from None


def _problems(exc: pydantic.ValidationError) -> str:
    """Each problem as `key: reason`, joined on one line; no value from the file in any."""
    found = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        key = ".".join(_key(str(part)) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            reason = "unknown key"
        elif err["type"] == "missing":
            reason = "missing"
        else:
            reason = err["msg"].removeprefix("Value error, ")
        found.append(f"{key}: {reason}")
    return "; ".join(found)


def _key(part: str) -> str:
    """A key as written, unless it does not look like one (a value pasted in its place)."""
    return part if _PLAIN_KEY.fullmatch(part) else f"(a key of {len(part)} characters)"


def shred(path: Path) -> str:
    """Overwrite the file with zeros in place, flush that to the device, remove the file and
    flush its directory; "" when done, else why not (the caller says so).

    What this promises: the file system no longer has the file, and on a disk that writes in
    place (a hard disk; ext4 in its default ordered mode; FAT) the key's blocks hold zeros.
    What it cannot promise: flash (an SSD, an SD card, a USB stick) remaps every write, so the
    old cells keep the key until the controller erases them, beyond the reach of the file
    system but not of a lab; journaling of data, copy-on-write file systems (btrfs, ZFS, APFS)
    and snapshots keep copies of their own. Hence the README's advice: a single-use auth key
    that expires within hours, spent by the join.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            os.pwrite(fd, b"\0" * size, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        path.unlink()
    except OSError as exc:
        return f"cannot shred {path}: {exc.strerror}; remove it by hand"
    with contextlib.suppress(OSError):  # the removal is made durable where the OS allows it
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return ""


# ---- consuming it --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Provisioned:
    """What consuming a file did."""

    source: Path
    admin: str
    tenants: tuple[str, ...]  # every tenant the admin holds `admin` in
    tenants_created: tuple[str, ...]
    roles_granted: tuple[str, ...]  # the tenants where the admin's role changed
    key_stored: bool  # False when the vault held this very key already
    shred_problem: str  # "" once the file is gone


async def record(
    pool: dbpool.Pool, config: settings.Settings, plan: Plan, *, source: Path, actor: str
) -> Provisioned:
    """The vault, the auth key in it, the tenants and the admin's roles, in one transaction."""
    initialised = await master_key.initialise(pool, config, replace_lost_key=False, actor=actor)
    box = initialised.vault
    key = plan.tailnet.auth_key.get_secret_value().encode()
    names = plan.tenant_names(config.default_tenant)
    async with pool.acquire() as conn, conn.transaction():
        created = [
            tenant_id
            for tenant_id, name in names.items()
            if await dbtenants.create_tenant(conn, tenant_id=tenant_id, name=name, actor=actor)
        ]
        stored = await tailnet_key(conn, config, box)
        if stored != key:
            await vault.set_secret(
                conn,
                box,
                tenant_id=config.default_tenant,
                integration=TAILNET_KEY_INTEGRATION,
                workflow=vault.WILDCARD,
                name=TAILNET_KEY_NAME,
                value=key,
                actor=actor,
            )
        granted = [
            tenant_id
            for tenant_id in names
            if await dbgrants.grant_console_role(
                conn, login=plan.admin.login, tenant_id=tenant_id, role=ADMIN_ROLE, actor=actor
            )
        ]
    return Provisioned(
        source=source,
        admin=plan.admin.login,
        tenants=tuple(names),
        tenants_created=tuple(created),
        roles_granted=tuple(granted),
        key_stored=stored != key,
        shred_problem="",
    )


async def tailnet_key(
    conn: dbpool.Connection | dbpool.Pool, config: settings.Settings, box: vault.Vault
) -> bytes | None:
    """The box's tailnet auth key in the vault (the default tenant's `tailscale auth-key`)."""
    try:
        return await vault.read_secret(
            conn,
            box,
            tenant_id=config.default_tenant,
            integration=TAILNET_KEY_INTEGRATION,
            workflow=vault.WILDCARD,
            name=TAILNET_KEY_NAME,
        )
    except errors.NotFoundError:
        return None


async def stored_key(pool: dbpool.Pool, config: settings.Settings) -> bytes | None:
    """The tailnet auth key the vault holds, if any (None too when the vault is not set up)."""
    try:
        box = await vault.open_vault(pool, vault.configured_key(config))
    except (vault.VaultNotInitialisedError, vault.MasterKeyMissingError):
        return None
    return await tailnet_key(pool, config, box)


async def join(config: settings.Settings, key: bytes) -> tailscale.Status:
    """Onto the tailnet with `key`: `up` the first time, `set` once joined (tailscale.join)."""
    with tailscale.auth_key_file(key) as key_file:
        return await mesh_of(config).join(
            auth_key_file=key_file,
            hostname=config.mesh.hostname or config.engine.node_name,
            advertise_tags=config.mesh.advertise_tags,
        )


async def provision(
    pool: dbpool.Pool, config: settings.Settings, path: Path, *, actor: str
) -> tuple[Provisioned, Plan]:
    """Read the file, record what it asks for, shred it (steps 1 to 3 of the module's list);
    the join is the caller's, with the plan's key."""
    plan = read(path)
    done = await record(pool, config, plan, source=path, actor=actor)
    log.info(
        "provisioned from %s: tenants %s, %s is their admin",
        path,
        ", ".join(done.tenants),
        done.admin,
        extra={
            "event": "provisioning.recorded",
            "source": str(path),
            "tenants": list(done.tenants),
            "tenants_created": list(done.tenants_created),
            "admin": done.admin,
        },
    )
    problem = shred(path)
    if problem:
        log.error("%s", problem, extra={"event": "provisioning.not_shredded"})
    return dataclasses.replace(done, shred_problem=problem), plan


def mesh_of(config: settings.Settings) -> tailscale.Tailscale:
    return tailscale.Tailscale(config.mesh.tailscale, timeout=config.mesh.command_timeout_seconds)


def console_url(config: settings.Settings, status: tailscale.Status, port: int) -> str:
    """The console's address on the tailnet: behind `tailscale serve` (HTTPS on the node's
    name) when a serve socket is configured, else the listener's own port on that name."""
    name = status.dns_name or (str(status.ipv4[0]) if status.ipv4 else status.hostname)
    if config.console.serve_socket is not None and status.dns_name:
        return f"https://{status.dns_name}/"
    return f"http://{name}:{port}/"


# ---- the packaged box's root step (appliance-provision.service) ---------------------------------


def stage(config: settings.Settings) -> tuple[Path, Plan] | None:
    """As root, before the sandboxed daemon starts: the file found in `provisioning.paths`
    (which the daemon can neither see nor remove) checked, copied into the state directory for
    the daemon (owned by the directory's owner, mode 0600), and the original shredded; its
    path and plan (the caller joins the tailnet with it: a write tailscaled allows root, not
    the service user). A bad file is refused (ProvisioningFileError) and left where it is."""
    target = config.state_dir / STAGED
    found = [path for path in candidates(config) if path != target]
    if not found:
        return None
    source = the_one(found)
    text = _text(source)
    plan = parse(text, source)
    owner = config.state_dir.stat()
    staging = target.with_name(f".{STAGED}.{os.getpid()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchown(out.fileno(), owner.st_uid, owner.st_gid)
        out.write(text.encode())
        out.flush()
        os.fsync(out.fileno())
    staging.replace(target)
    problem = shred(source)
    if problem:
        log.error("%s", problem, extra={"event": "provisioning.not_shredded"})
    return source, plan


# ---- the daemon ------------------------------------------------------------------------------


class Provisioner:
    """The daemon's side: consume a file found at start, or wait for one while the box is not
    on its tailnet; once a provisioned box's console is bound, announce its URL.

    What it waits for is logged once (again only when it changes) and is the systemd status,
    sent again at each look, so the console listener's own, older waiting line (tailscaled
    is NeedsLogin) does not stay there instead.
    """

    def __init__(
        self,
        config: settings.Settings,
        pool: dbpool.Pool,
        console: listeners.Console,
        *,
        notify: Callable[[str], None],
    ) -> None:
        self._config = config
        self._pool = pool
        self._console = console
        self._notify = notify
        self._mesh = mesh_of(config)
        self._said = ""
        self._join_pending = False

    async def run(self) -> None:
        looked = await self._look()
        while True:
            status = await self._status()
            if isinstance(status, tailscale.Status) and status.ready:
                break
            if self._join_pending and isinstance(status, tailscale.Status):
                await self._rejoin()
            elif looked != "consumed":
                looked = await self._look()
                if looked == "none":
                    self._say(
                        f"waiting to be provisioned: the tailnet is not up ({_state(status)}) "
                        f"and no provisioning file is in {look_in(self._config)}; put one "
                        "there (README: First boot) or run `appliance provision FILE`",
                        event="provisioning.waiting",
                    )
            if self._said:  # said again at each look: the console's own waiting line is older
                self._notify(self._said)
            await asyncio.sleep(self._config.provisioning.poll_seconds)
        if looked == "consumed":
            await self._announce()

    async def _status(self) -> tailscale.Status | str:
        """This node's state, or why it cannot be known."""
        try:
            return await self._mesh.status()
        except errors.ApplianceError as exc:
            return exc.message.splitlines()[0]

    async def _look(self) -> Literal["none", "refused", "consumed"]:
        """Consume the file there is, if any."""
        found = candidates(self._config)
        if not found:
            return "none"
        try:
            done, plan = await provision(
                self._pool, self._config, the_one(found), actor="daemon:provisioning"
            )
        except errors.DatabaseUnavailableError:
            return "refused"  # the outage is logged once, by the db watch; the next look retries
        except (ProvisioningFileError, errors.ConfigError) as exc:
            self._say(f"{exc.message}; nothing was consumed", event="provisioning.refused")
            return "refused"
        self._notify(f"provisioned from {done.source}: joining the tailnet")
        await self._join(plan.tailnet.auth_key.get_secret_value().encode())
        return "consumed"

    async def _join(self, key: bytes) -> None:
        try:
            status = await join(self._config, key)
        except tailscale.TailscaleUnavailableError as exc:
            self._join_pending = True  # tried again once tailscaled answers
            self._say(
                f"the auth key is in the vault; waiting for tailscaled to join the tailnet "
                f"({exc.message.splitlines()[0]})",
                event="provisioning.join_waiting",
            )
            return
        except errors.ApplianceError as exc:
            self._join_pending = False
            self._say(
                f"cannot join the tailnet: {exc.message.splitlines()[0]}; the auth key is in "
                "the vault: once the cause is fixed, `appliance init` joins with it (as root, "
                "or as a user tailscaled accepts: `sudo tailscale set --operator=appliance`)",
                event="provisioning.join_failed",
            )
            return
        self._join_pending = False
        log.info(
            "joined the tailnet as %s (%s)",
            status.dns_name or status.hostname,
            status.backend_state,
            extra={"event": "provisioning.joined", "state": status.backend_state},
        )

    async def _rejoin(self) -> None:
        """A join that waited for tailscaled, with the key from the vault."""
        try:
            key = await stored_key(self._pool, self._config)
        except errors.DatabaseUnavailableError:
            return
        if key is None:
            self._join_pending = False
            return
        await self._join(key)

    async def _announce(self) -> None:
        """The console's tailnet URL, once its listener is bound (after the exposure gate)."""
        await self._console.bound.wait()
        status = await self._status()
        if not isinstance(status, tailscale.Status):
            return
        url = console_url(self._config, status, self._console.port)
        message = f"provisioned: the console is at {url}"
        log.info("%s", message, extra={"event": "provisioning.done", "url": url})
        print(message, flush=True)  # the daemon's output: the journal under systemd
        self._notify(message)

    def _say(self, message: str, *, event: str) -> None:
        """Log a message once (again only when it changes), and show it as systemd status."""
        if message == self._said:
            return
        self._said = message
        level = logging.ERROR if event == "provisioning.refused" else logging.WARNING
        log.log(level, "%s", message, extra={"event": event})
        self._notify(message)


def _state(status: tailscale.Status | str) -> str:
    return (
        f"tailscaled is {status.backend_state}" if isinstance(status, tailscale.Status) else status
    )


def describe(done: Provisioned) -> Iterable[tuple[str, Any]]:
    """What a provisioning did, as (label, value) lines for the CLI."""
    yield "source", f"{done.source} ({'removed' if not done.shred_problem else done.shred_problem})"
    yield "admin", done.admin
    yield (
        "tenants",
        ", ".join(f"{t} (created)" if t in done.tenants_created else t for t in done.tenants),
    )
    yield "auth key", "sealed in the vault" if done.key_stored else "in the vault already"
