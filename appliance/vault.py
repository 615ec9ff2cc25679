"""The vault: secrets encrypted at rest under a master key kept outside the database.

The master key (32 random bytes) comes from one source, chosen explicitly, never by fallback:

- `credential`: a systemd credential, `$CREDENTIALS_DIRECTORY/<name>`, from
  `LoadCredentialEncrypted=` (TPM2 and/or the host key; the first choice on Linux);
- `file`: a key file owned by the daemon's user, mode 0600 (refused when group or others can
  read it, or another user owns it);
- `keyring`: the OS keyring, only through a secure backend (macOS Keychain, Secret Service);
  a plaintext, fail or null backend is refused with an error, never used quietly.

Postgres holds a fingerprint of every key version (`vault_keys`); opening the vault with a key
that matches none of them is fatal and names the expected fingerprint, instead of decrypting to
garbage. Each value is sealed with PyNaCl `SecretBox` (XSalsa20-Poly1305, a fresh 24-byte nonce
per value) over the canonical scope followed by the value; after decryption the scope is checked,
so a ciphertext copied to another tenant, integration, workflow or name does not open there.

Scope: a secret belongs to tenant + integration + workflow + name. Workflow `*` means every
workflow of that tenant using that integration; a secret stored for one workflow overrides the
`*` one of the same name. A read outside the caller's scope (another tenant, another workflow)
is `NotFoundError`, exactly like a secret that does not exist, so probing reveals nothing.
Every set, rotate and delete writes an audit entry in the `tenant:<id>` chain, never the value.

A secret may carry a rotation schedule. `announce_overdue_secrets` (run periodically by the
daemon) emits the outbox event `secret.overdue` once per secret per period; a new value starts
the next period.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import pwd
import re
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import keyring
import keyring.backend
import keyring.errors
import nacl.exceptions
import nacl.secret
import nacl.utils

from appliance import errors, settings
from appliance.db import pool as dbpool
from appliance.db import vault as dbvault

log = logging.getLogger(__name__)

KeySource = Literal["keyring", "credential", "file"]
ValueSource = Literal["stdin", "file"]

KEY_BYTES = nacl.secret.SecretBox.KEY_SIZE
WILDCARD = "*"
DEFAULT_CREDENTIAL = "appliance-vault-key"
DEFAULT_KEYRING_SERVICE = "appliance"
DEFAULT_KEYRING_USER = "vault-master-key"
MAX_VALUE_BYTES = 64 * 1024

_PERSON = b"appliance-vault"
_FORMAT = b"appliance-vault/1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_INTEGRATION = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
# Backends that keep secrets encrypted by the OS, by exact class (a subclass or a chainer that
# might delegate to a plaintext store is not on the list).
SECURE_KEYRING_BACKENDS = frozenset(
    {
        "keyring.backends.macOS.Keyring",
        "keyring.backends.SecretService.Keyring",
        "keyring.backends.libsecret.Keyring",
        "keyring.backends.Windows.WinVaultKeyring",
    }
)


class InsecureKeyStoreError(errors.ConfigError):
    """The vault master key is kept where others could read it; refusing to use it."""


class MasterKeyMissingError(errors.ConfigError):
    """The vault master key could not be read from the configured source."""


class KeyMismatchError(errors.ConfigError):
    """The vault master key matches no key version recorded in the database."""


class VaultNotInitialisedError(errors.ConfigError):
    """No vault master key is recorded in the database; run `appliance init`."""


class SecretIntegrityError(errors.ApplianceError):
    """A stored secret does not decrypt or does not belong to the scope it was read from."""

    exit_code = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Scope:
    """Where a secret belongs: tenant + integration + workflow (or `*`) + name."""

    tenant_id: str
    integration: str
    workflow: str
    name: str

    def canonical(self) -> bytes:
        """The unambiguous encoding sealed in front of the value."""
        fields = [self.tenant_id, self.integration, self.workflow, self.name]
        return json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode()

    def validate(self) -> Scope:
        """This scope, or InputError naming the field that is not valid."""
        if not self.tenant_id:
            raise errors.InputError("secret scope: tenant is empty")
        if not _INTEGRATION.match(self.integration):
            raise errors.InputError(
                f"integration {self.integration!r} must be lower-case letters, digits, '_', '.'"
                " or '-' (at most 63)"
            )
        if not self.workflow or len(self.workflow) > 200 or not self.workflow.isprintable():
            raise errors.InputError(f"workflow {self.workflow!r} must be 1-200 printable chars")
        if not _NAME.match(self.name):
            raise errors.InputError(
                f"secret name {self.name!r} must be letters, digits, '_', '.' or '-' (at most 128)"
            )
        return self


# --- the master key -----------------------------------------------------------------------


def fingerprint(key: bytes) -> str:
    """The key's fingerprint: keyed BLAKE2b-128 with a fixed personalisation, in hex."""
    _check_key_length(key, "key")
    return hashlib.blake2b(b"", key=key, digest_size=16, person=_PERSON).hexdigest()


def new_key() -> bytes:
    """32 fresh random bytes."""
    return nacl.utils.random(KEY_BYTES)


def _check_key_length(key: bytes, where: str) -> bytes:
    if len(key) != KEY_BYTES:
        raise MasterKeyMissingError(
            f"vault master key from {where} {_shape(key)}, expected {KEY_BYTES} raw bytes"
        )
    return key


def _shape(key: bytes) -> str:
    """What a key of the wrong length looks like (never any of its bytes)."""
    if not key:
        return "is empty"
    text = key.strip()
    if len(text) == 2 * KEY_BYTES and all(c in b"0123456789abcdefABCDEF" for c in text):
        return f"has {len(key)} bytes: it is a key written as hex text"
    with contextlib.suppress(binascii.Error, ValueError):
        if len(base64.b64decode(text, validate=True)) == KEY_BYTES:
            return f"has {len(key)} bytes: it is a key written as base64 text"
    if len(text) == KEY_BYTES:
        return f"has {len(key)} bytes: a line ending or spaces were added to it"
    return f"has {len(key)} bytes"


def check_private_file(path: Path) -> None:
    """Refuse a key file that is not a regular file owned by us with no group/other access."""
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise MasterKeyMissingError(f"vault key file {path} does not exist") from exc
    except OSError as exc:
        raise MasterKeyMissingError(f"vault key file {path} cannot be read: {exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise MasterKeyMissingError(f"vault key file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise InsecureKeyStoreError(
            f"vault key file {path} has mode {stat.S_IMODE(info.st_mode):04o}: group or others "
            f"can access it; run `chmod 600 {path}` (and rotate the key if it may have leaked)"
        )
    if info.st_uid != os.geteuid():
        raise InsecureKeyStoreError(
            f"vault key file {path} is owned by uid {info.st_uid}, not by the daemon's user "
            f"(uid {os.geteuid()}); run `chown {_user_name(os.geteuid())} {path}`"
        )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def read_key_file(path: Path) -> bytes:
    """The key in a private key file (32 raw bytes), after checking owner and mode."""
    check_private_file(path)
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise MasterKeyMissingError(f"vault key file {path} cannot be read: {exc}") from exc
    return _check_key_length(key, str(path))


def create_key_file(path: Path) -> bytes:
    """Write a new key to `path` with mode 0600, atomically; refuse to replace an existing one."""
    key = new_key()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)
            out.write(key)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError as exc:
            raise errors.StateError(
                f"vault key file {path} already exists; it is never overwritten"
            ) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return key


def read_credential(name: str = DEFAULT_CREDENTIAL) -> bytes:
    """The key from a systemd credential (`LoadCredentialEncrypted=<name>:...`)."""
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if not folder:
        raise MasterKeyMissingError(
            "CREDENTIALS_DIRECTORY is not set: the unit needs "
            f"`LoadCredentialEncrypted={name}:<path>` to pass the vault key as a credential"
        )
    return read_key_file(Path(folder) / name)


def check_keyring_backend(backend: keyring.backend.KeyringBackend) -> None:
    """Refuse any keyring backend that is not an OS-encrypted store."""
    kind = f"{type(backend).__module__}.{type(backend).__qualname__}"
    if kind not in SECURE_KEYRING_BACKENDS:
        raise InsecureKeyStoreError(
            f"keyring backend {kind} does not keep the vault key encrypted by the OS; refusing "
            f"it (allowed: {', '.join(sorted(SECURE_KEYRING_BACKENDS))}). On a headless Linux "
            "box use source `credential` (systemd) or `file` instead"
        )


def secure_keyring_backend() -> keyring.backend.KeyringBackend:
    """The platform's secure backend, chosen explicitly (never auto-detected), if it works here."""
    backend: keyring.backend.KeyringBackend
    if sys.platform == "darwin":
        from keyring.backends import macOS

        backend = macOS.Keyring()
    else:
        from keyring.backends import SecretService

        backend = SecretService.Keyring()  # type: ignore[no-untyped-call]
    try:
        _ = type(backend).priority
    except Exception as exc:
        raise MasterKeyMissingError(
            f"keyring backend {type(backend).__module__} is not usable here: {exc}"
        ) from exc
    return backend


def read_keyring(
    backend: keyring.backend.KeyringBackend | None = None,
    *,
    service: str = DEFAULT_KEYRING_SERVICE,
    user: str = DEFAULT_KEYRING_USER,
) -> bytes:
    """The key (base64) from a secure keyring backend: the given one, else the configured one."""
    chosen = backend if backend is not None else keyring.get_keyring()
    check_keyring_backend(chosen)
    try:
        stored = chosen.get_password(service, user)
    except keyring.errors.KeyringError as exc:
        raise MasterKeyMissingError(f"keyring refused to read the vault key: {exc}") from exc
    if stored is None:
        raise MasterKeyMissingError(f"keyring holds no vault key under {service}/{user}")
    try:
        key = base64.b64decode(stored, validate=True)
    except binascii.Error as exc:
        raise MasterKeyMissingError(f"keyring entry {service}/{user} is not base64") from exc
    return _check_key_length(key, f"keyring {service}/{user}")


def store_in_keyring(
    key: bytes,
    backend: keyring.backend.KeyringBackend | None = None,
    *,
    service: str = DEFAULT_KEYRING_SERVICE,
    user: str = DEFAULT_KEYRING_USER,
) -> None:
    """Keep the key (base64) in a secure keyring backend, for `init`."""
    chosen = backend if backend is not None else keyring.get_keyring()
    check_keyring_backend(chosen)
    try:
        chosen.set_password(
            service, user, base64.b64encode(_check_key_length(key, "init")).decode()
        )
    except keyring.errors.KeyringError as exc:
        raise MasterKeyMissingError(f"keyring refused to store the vault key: {exc}") from exc


def load_master_key(
    source: KeySource,
    *,
    path: Path | None = None,
    credential: str = DEFAULT_CREDENTIAL,
    backend: keyring.backend.KeyringBackend | None = None,
) -> bytes:
    """The master key from the one source configured; errors say which source and the fix."""
    if source == "file":
        if path is None:
            raise errors.ConfigError("vault: source `file` needs a key file path")
        return read_key_file(path)
    if source == "credential":
        return read_credential(credential)
    return read_keyring(backend)


def configured_key(config: settings.Settings) -> bytes:
    """The master key from the source `config.vault` names (key file: <state_dir>/vault.key)."""
    return load_master_key(
        config.vault.source, path=key_file_path(config), credential=config.vault.credential
    )


def key_file_path(config: settings.Settings) -> Path:
    """The key file of source `file`: `vault.key_file`, else <state_dir>/vault.key."""
    return config.vault.key_file or config.state_dir / "vault.key"


# --- encryption ---------------------------------------------------------------------------


class Vault:
    """The loaded master key versions; seals and opens values bound to their scope."""

    __slots__ = ("_boxes", "_current", "_fingerprints")

    def __init__(self, keys: Mapping[int, bytes], *, current: int) -> None:
        if current not in keys:
            raise errors.ApplianceError(f"vault: current key version {current} is not loaded")
        self._boxes = {
            v: nacl.secret.SecretBox(_check_key_length(k, "vault")) for v, k in keys.items()
        }
        self._fingerprints = {version: fingerprint(key) for version, key in keys.items()}
        self._current = current

    def __repr__(self) -> str:
        return f"Vault(current={self._current}, fingerprint={self.fingerprint})"

    @property
    def current_version(self) -> int:
        """The key version new values are sealed under."""
        return self._current

    @property
    def fingerprint(self) -> str:
        """The current key's fingerprint."""
        return self._fingerprints[self._current]

    @property
    def versions(self) -> frozenset[int]:
        """Every key version loaded."""
        return frozenset(self._boxes)

    def seal(self, scope: Scope, value: bytes) -> tuple[int, bytes]:
        """(key version, nonce | ciphertext | MAC) of the scope-bound value."""
        canonical = scope.canonical()
        header = _FORMAT + len(canonical).to_bytes(2, "big") + canonical
        sealed = self._boxes[self._current].encrypt(header + value)
        return self._current, bytes(sealed)

    def open(self, scope: Scope, key_version: int, ciphertext: bytes) -> bytes:
        """The value sealed for exactly this scope; SecretIntegrityError otherwise."""
        box = self._boxes.get(key_version)
        if box is None:
            raise KeyMismatchError(
                f"secret {_describe(scope)} is sealed under key version {key_version}, which "
                f"is not loaded (loaded: {sorted(self._boxes)})"
            )
        try:
            plain = box.decrypt(ciphertext)
        except nacl.exceptions.CryptoError as exc:
            raise SecretIntegrityError(
                f"secret {_describe(scope)} does not decrypt: its ciphertext was altered"
            ) from exc
        canonical = scope.canonical()
        expected = _FORMAT + len(canonical).to_bytes(2, "big") + canonical
        if not hmac.compare_digest(plain[: len(expected)], expected):
            raise SecretIntegrityError(
                f"secret {_describe(scope)} was sealed for another scope; it was moved"
            )
        return plain[len(expected) :]

    def _with(self, version: int, key: bytes) -> Vault:
        keys = {v: bytes(box) for v, box in self._boxes.items()}
        keys[version] = key
        return Vault(keys, current=version)


def _describe(scope: Scope) -> str:
    return f"{scope.tenant_id}/{scope.integration}/{scope.workflow}/{scope.name}"


async def open_vault(
    pool: dbpool.Pool,
    key: bytes,
    *,
    previous_keys: Iterable[bytes] = (),
    initialise: bool = False,
    where: str = "configured source",
) -> Vault:
    """The vault for `key`, which must be the current version recorded in Postgres (T16).

    With `initialise` (for `appliance init`) and no version recorded yet, `key` becomes
    version 1. `previous_keys` lets older versions be read; each must match a recorded one.
    `where` names the key's source in errors.
    """
    _check_key_length(key, "vault")
    offered = fingerprint(key)
    versions = await dbvault.list_vault_keys(pool)
    if not versions:
        if not initialise:
            raise VaultNotInitialisedError(
                "no vault master key is recorded in the database; run `appliance init` "
                f"(the key offered has fingerprint {offered})"
            )
        await dbvault.register_first_vault_key(pool, offered)
        versions = await dbvault.list_vault_keys(pool)
    current = match_key(offered, versions, where)
    keys = {current.key_version: key}
    by_print = {v.fingerprint: v.key_version for v in versions}
    for old in previous_keys:
        old_print = fingerprint(old)
        if old_print not in by_print:
            raise KeyMismatchError(
                f"previous vault key with fingerprint {old_print} matches no recorded version"
            )
        keys[by_print[old_print]] = old
    log.info(
        "vault opened",
        extra={"event": "vault.opened", "key_version": current.key_version, "fingerprint": offered},
    )
    return Vault(keys, current=current.key_version)


def current_key_version(versions: Sequence[dbvault.VaultKey]) -> dbvault.VaultKey:
    return next((v for v in versions if v.retired_at is None), versions[-1])


def match_key(offered: str, versions: Sequence[dbvault.VaultKey], where: str) -> dbvault.VaultKey:
    """The current version when `offered` is its fingerprint; KeyMismatchError otherwise."""
    current = current_key_version(versions)
    if offered == current.fingerprint:
        return current
    known = {v.fingerprint: v.key_version for v in versions}
    hint = (
        f"it is retired key version {known[offered]}; use the key that replaced it"
        if offered in known
        else "it matches no recorded key version"
    )
    raise KeyMismatchError(
        f"vault master key in the {where} has fingerprint {offered}, expected "
        f"{current.fingerprint} (key version {current.key_version}): {hint}. Restore the right "
        "key there; never re-initialise (if the key is lost, "
        "`appliance init --replace-lost-vault-key` deletes every secret sealed under it)"
    )


async def recorded_keys(pool: dbpool.Pool) -> list[dbvault.VaultKey]:
    """Every key version recorded (fingerprints only), oldest first; empty: never initialised."""
    return await dbvault.list_vault_keys(pool)


async def forget_lost_key(pool: dbpool.Pool, new_fingerprint: str, *, actor: str) -> list[str]:
    """The current key is lost: delete every secret (audited per tenant, by scope) and record
    `new_fingerprint` as the next key version, in one transaction; the deleted scopes."""
    async with pool.acquire() as conn, conn.transaction():
        await dbvault.lock_current_vault_key(conn)
        lost = await dbvault.delete_lost_secrets(conn, actor=actor)
        await dbvault.retire_vault_keys(conn)
        await dbvault.add_vault_key(conn, new_fingerprint)
    return lost


async def rotate_master_key(
    pool: dbpool.Pool, vault: Vault, new_key: bytes, *, actor: str
) -> Vault:
    """Re-encrypt every secret under `new_key` as the next version, in one transaction.

    Returns the vault holding both versions; after this, the new key alone opens the vault.
    """
    _check_key_length(new_key, "rotation")
    new_print = fingerprint(new_key)
    async with pool.acquire() as conn, conn.transaction():
        current = await dbvault.lock_current_vault_key(conn)
        if current is None or current.key_version != vault.current_version:
            raise errors.StateError(
                "the vault master key was rotated by another process; restart with the new key"
            )
        known = {v.fingerprint for v in await dbvault.list_vault_keys(conn)}
        if new_print in known:
            raise errors.InputError(
                f"the new master key (fingerprint {new_print}) was already used; use a fresh one"
            )
        await dbvault.retire_vault_keys(conn)
        version = await dbvault.add_vault_key(conn, new_print)
        rotated = vault._with(version, new_key)
        counts: dict[str, int] = {}
        for row in await dbvault.lock_secrets(conn):
            scope = Scope(row.tenant_id, row.integration, row.workflow, row.name)
            value = vault.open(scope, row.key_version, row.ciphertext)
            _, sealed = rotated.seal(scope, value)
            await dbvault.reencrypt_secret(
                conn, secret_id=row.secret_id, key_version=version, ciphertext=sealed
            )
            counts[row.tenant_id] = counts.get(row.tenant_id, 0) + 1
        for tenant_id, count in sorted(counts.items()):
            await dbvault.audit_reencryption(
                conn, tenant_id=tenant_id, actor=actor, key_version=version, count=count
            )
    log.info(
        "vault master key rotated",
        extra={"event": "vault.rotated", "key_version": version, "fingerprint": new_print},
    )
    return rotated


# --- secrets ------------------------------------------------------------------------------


def _check_value(value: bytes) -> bytes:
    if not value:
        raise errors.InputError("a secret value cannot be empty")
    if len(value) > MAX_VALUE_BYTES:
        raise errors.InputError(f"a secret value is limited to {MAX_VALUE_BYTES} bytes")
    return value


async def set_secret(
    pool: dbpool.Pool | dbpool.Connection,
    vault: Vault,
    *,
    tenant_id: str,
    integration: str,
    workflow: str,
    name: str,
    value: bytes,
    rotate_every: dt.timedelta | None = None,
    actor: str,
) -> bool:
    """Create or replace a secret (value and schedule), audited; True when created."""
    scope = Scope(tenant_id, integration, workflow, name).validate()
    if rotate_every is not None and rotate_every <= dt.timedelta(0):
        raise errors.InputError("rotate_every must be positive")
    version, sealed = vault.seal(scope, _check_value(value))
    return await dbvault.set_secret(
        pool,
        tenant_id=tenant_id,
        integration=integration,
        workflow=workflow,
        name=name,
        key_version=version,
        ciphertext=sealed,
        rotate_every=rotate_every,
        actor=actor,
    )


async def rotate_secret(
    pool: dbpool.Pool,
    vault: Vault,
    *,
    tenant_id: str,
    integration: str,
    workflow: str,
    name: str,
    value: bytes,
    actor: str,
) -> None:
    """Give an existing secret a new value (its schedule restarts), audited."""
    scope = Scope(tenant_id, integration, workflow, name).validate()
    version, sealed = vault.seal(scope, _check_value(value))
    rotated = await dbvault.rotate_secret(
        pool,
        tenant_id=tenant_id,
        integration=integration,
        workflow=workflow,
        name=name,
        key_version=version,
        ciphertext=sealed,
        actor=actor,
    )
    if not rotated:
        raise errors.NotFoundError(f"no secret {_describe(scope)}")


async def delete_secret(
    pool: dbpool.Pool,
    *,
    tenant_id: str,
    integration: str,
    workflow: str,
    name: str,
    actor: str,
) -> None:
    """Delete a secret, audited; NotFoundError when there is none."""
    deleted = await dbvault.delete_secret(
        pool,
        tenant_id=tenant_id,
        integration=integration,
        workflow=workflow,
        name=name,
        actor=actor,
    )
    if not deleted:
        raise errors.NotFoundError(f"no secret {tenant_id}/{integration}/{workflow}/{name}")


async def read_secret(
    pool: dbpool.Pool | dbpool.Connection,
    vault: Vault,
    *,
    tenant_id: str,
    integration: str,
    workflow: str,
    name: str,
) -> bytes:
    """The value a workflow of a tenant sees under `name` (its own, else the `*` one).

    Outside the caller's scope the answer is NotFoundError, the same as for no secret at all.
    """
    row = await dbvault.find_secret(
        pool, tenant_id=tenant_id, integration=integration, workflow=workflow, name=name
    )
    if row is None:
        raise errors.NotFoundError(
            f"no secret {name!r} for tenant {tenant_id!r}, integration {integration!r},"
            f" workflow {workflow!r}"
        )
    scope = Scope(row.tenant_id, row.integration, row.workflow, row.name)
    return vault.open(scope, row.key_version, row.ciphertext)


async def list_secrets(pool: dbpool.Pool, *, tenant_id: str) -> list[dbvault.SecretInfo]:
    """A tenant's secrets, metadata only (never a value)."""
    return await dbvault.list_secrets(pool, tenant_id=tenant_id)


async def overdue_secrets(pool: dbpool.Pool) -> list[dbvault.SecretInfo]:
    """Secrets of every tenant whose rotation schedule has passed."""
    return await dbvault.overdue_secrets(pool)


async def announce_overdue_secrets(pool: dbpool.Pool) -> list[dbvault.SecretInfo]:
    """Emit the outbox event `secret.overdue` once per secret per rotation period; those.

    A secret is announced the first time this runs after its due time; giving it a new value
    (set or rotate) starts the next period. Several processes may run this at once: each
    secret is announced by one of them.
    """
    announced = await dbvault.announce_overdue_secrets(pool)
    for secret in announced:
        where = _describe(Scope(secret.tenant_id, secret.integration, secret.workflow, secret.name))
        log.warning(
            "secret %s is overdue for rotation since %s",
            where,
            secret.due_at,
            extra={"event": "secret.overdue", "secret": where, "tenant_id": secret.tenant_id},
        )
    return announced


def read_value(source: ValueSource, path: Path | None = None) -> bytes:
    """A secret value from stdin (one trailing newline dropped) or a file (verbatim).

    Never from the command line, where it would land in shell history and `ps`.
    """
    if source == "stdin":
        value = sys.stdin.buffer.read(MAX_VALUE_BYTES + 2)
        if value.endswith(b"\r\n"):
            value = value[:-2]
        elif value.endswith(b"\n"):
            value = value[:-1]
    else:
        if path is None:
            raise errors.UsageError("a secret read from a file needs the file's path")
        try:
            with path.open("rb") as handle:
                value = handle.read(MAX_VALUE_BYTES + 1)
        except OSError as exc:
            raise errors.InputError(f"cannot read the secret value from {path}: {exc}") from exc
    return _check_value(value)
