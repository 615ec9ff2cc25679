"""The vault's master key as this box is configured: where it is kept, whether it is there, well
formed and the recorded one, and the two moments it changes hands.

- `check_at_start` (the daemon, before any work): once a key version is recorded in Postgres, a
  missing or malformed key (no file, empty, wrong length, hex or base64 text instead of the raw
  32 bytes, readable by others, owned by another user, no credential, no keyring entry) or
  another key is fatal: ConfigError, exit 78, one line naming where the key was looked for and
  the fingerprint expected. A vault never initialised (no version recorded) passes: its tools
  get no secrets until `appliance init`.
- `initialise` (`appliance init`): registers the configured key as version 1 when none is
  recorded, creating a key file for source `file` if there is none. Once a version is recorded
  it never writes a key: a missing key is an error that says how to restore it, or, when it is
  lost for good, to run `appliance init --replace-lost-vault-key`, which deletes every secret
  (audited, by scope), keeps the old key file beside the new one and records the new key as the
  next version.
- `open_configured` (commands that read or write secrets) and `describe` (the doctor's line).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import shlex
import stat
from collections.abc import Sequence
from pathlib import Path

from appliance import errors, settings, vault
from appliance.db import pool as dbpool
from appliance.db import vault as dbvault

log = logging.getLogger(__name__)

REPLACE_LOST_KEY_COMMAND = "appliance init --replace-lost-vault-key"


def key_location(config: settings.Settings) -> str:
    """Where the configured source keeps the key, for messages."""
    if config.vault.source == "file":
        return f"key file {vault.key_file_path(config)}"
    if config.vault.source == "credential":
        folder = os.environ.get("CREDENTIALS_DIRECTORY") or "$CREDENTIALS_DIRECTORY"
        return f"systemd credential {config.vault.credential} ({folder}/{config.vault.credential})"
    return f"keyring entry {vault.DEFAULT_KEYRING_SERVICE}/{vault.DEFAULT_KEYRING_USER}"


def key_mode(config: settings.Settings) -> str | None:
    """The key file's (or credential's) mode as `0600`; None for the keyring or no file."""
    if config.vault.source == "keyring":
        return None
    if config.vault.source == "file":
        path = vault.key_file_path(config)
    else:
        folder = os.environ.get("CREDENTIALS_DIRECTORY")
        if not folder:
            return None
        path = Path(folder) / config.vault.credential
    try:
        return f"{stat.S_IMODE(path.stat().st_mode):04o}"
    except OSError:
        return None


def _restore_advice(config: settings.Settings, expected: dbvault.VaultKey) -> str:
    """The one line that says which key is expected and what to do to get it back."""
    if config.vault.source == "file":
        restore = f"restore that key to {vault.key_file_path(config)} (32 raw bytes, mode 0600)"
    elif config.vault.source == "credential":
        restore = (
            f"pass that key as the systemd credential {config.vault.credential} "
            f"(LoadCredentialEncrypted={config.vault.credential}:FILE in the unit)"
        )
    else:
        restore = (
            f"store that key (base64) in the keyring entry "
            f"{vault.DEFAULT_KEYRING_SERVICE}/{vault.DEFAULT_KEYRING_USER}"
        )
    return (
        f"the vault expects the key with fingerprint {expected.fingerprint} (key version "
        f"{expected.key_version}): {restore}; if it is lost, run `{REPLACE_LOST_KEY_COMMAND}` "
        "(every secret sealed under it is deleted and must be set again)"
    )


def _recorded_key(config: settings.Settings, versions: Sequence[dbvault.VaultKey]) -> bytes:
    """The configured key of a vault with recorded versions; one-line errors name where it was
    looked for, the fingerprint expected and how to get the key back."""
    current = vault.current_key_version(versions)
    try:
        return vault.configured_key(config)
    except vault.InsecureKeyStoreError as exc:
        raise vault.InsecureKeyStoreError(
            f"{exc.message} (the vault's key has fingerprint {current.fingerprint}, key version "
            f"{current.key_version})"
        ) from None
    except vault.MasterKeyMissingError as exc:
        found = None
        if config.vault.source == "file":
            found = _recoverable(vault.key_file_path(config), current.fingerprint)
        if found is not None:
            advice = (
                f"it holds the vault's key (fingerprint {current.fingerprint}) in another form: "
                f"write it as the 32 raw bytes with `{found[1]}`"
            )
        else:
            advice = _restore_advice(config, current)
        raise vault.MasterKeyMissingError(f"{exc.message}; {advice}") from None


async def open_configured(pool: dbpool.Pool, config: settings.Settings) -> vault.Vault:
    """The vault under the configured key, for a command that reads or writes secrets."""
    versions = await vault.recorded_keys(pool)
    if not versions:
        raise vault.VaultNotInitialisedError(
            "no vault master key is recorded in the database: run `appliance init` "
            f"(it registers the key of the {key_location(config)}, creating a key file if the "
            "source is `file` and there is none)"
        )
    key = _recorded_key(config, versions)
    return await vault.open_vault(pool, key, where=key_location(config))


async def check_at_start(pool: dbpool.Pool, config: settings.Settings) -> None:
    """The daemon's check before any work: once a key version is recorded, the configured key
    must be there, well formed, private and the current one; ConfigError (exit 78) otherwise.

    A vault never initialised passes: its tools get no secrets until `appliance init`. So does
    an ingress node none of whose sources keeps its secret in the vault: it never opens it.
    """
    uses_vault = config.mode != "ingress" or any(
        source.secret_ref for source in config.ingress.sources if config.ingress.enabled
    )
    if not uses_vault:
        return
    versions = await vault.recorded_keys(pool)
    if versions:
        vault.match_key(
            vault.fingerprint(_recorded_key(config, versions)), versions, key_location(config)
        )


async def initialise(
    pool: dbpool.Pool, config: settings.Settings, *, replace_lost_key: bool, actor: str
) -> Initialised:
    """`appliance init`: the vault under the configured key, registering it when none is.

    A key file is created (source `file`) only while no key version is recorded; with versions
    recorded and the key missing or malformed, this refuses and says how to restore it. With
    `replace_lost_key`, a lost key (missing, malformed or not the recorded one) is replaced:
    every secret is deleted (they cannot be opened any more) and the new key becomes the next
    version; a key file in the way is kept beside it as `<name>.lost-<time>`, never deleted.
    """
    versions = await vault.recorded_keys(pool)
    path = vault.key_file_path(config)
    if not versions:
        if config.vault.source == "file" and not path.exists() and not path.is_symlink():
            vault.create_key_file(path)
        try:
            key = vault.configured_key(config)
        except vault.MasterKeyMissingError as exc:
            if config.vault.source != "file" or not path.exists():
                raise
            raise vault.MasterKeyMissingError(
                f"{exc.message}; no secret is sealed under it yet: move it away "
                f"(`mv {path} {path}.bad`) and run `appliance init` again to create a new one"
            ) from None
        return Initialised(await vault.open_vault(pool, key, initialise=True), ())
    if not replace_lost_key:
        return Initialised(await open_configured(pool, config), ())
    return await _replace_lost_key(pool, config, versions, actor=actor)


def _raw(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _recoverable(path: Path, expected: str) -> tuple[bytes, str] | None:
    """When the key file holds the expected key in another form (hex or base64 text, bytes
    added after it): that key, and the shell command that writes it as the 32 raw bytes."""
    raw = _raw(path)
    if raw is None:
        return None
    quoted = shlex.quote(str(path))
    rewrite = f"umask 077; {{}} {quoted} > {quoted}.raw && mv {quoted}.raw {quoted}"
    forms = [(raw[: vault.KEY_BYTES], f"truncate -s {vault.KEY_BYTES} {quoted}")]
    with contextlib.suppress(ValueError):
        forms.append((bytes.fromhex(raw.strip().decode("ascii")), rewrite.format("xxd -r -p")))
    with contextlib.suppress(ValueError):
        forms.append((base64.b64decode(raw.strip(), validate=True), rewrite.format("base64 -d")))
    for key, command in forms:
        if len(key) == vault.KEY_BYTES and vault.fingerprint(key) == expected:
            return key, command
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class KeyState:
    """The configured key as `appliance doctor` reports it."""

    where: str
    mode: str | None  # of the key file or credential, as 0600; None for the keyring
    fingerprint: str | None  # of the configured key; None when it cannot be loaded
    expected: dbvault.VaultKey | None  # the current recorded version; None: never initialised
    problem: str  # why the key cannot be loaded ("" when it can)
    fix: str  # what to do about the problem, or about a key that is not the expected one


async def inspect(pool: dbpool.Pool, config: settings.Settings) -> KeyState:
    """Where the key is, whether it loads, and whether it is the one the vault expects."""
    versions = await vault.recorded_keys(pool)
    expected = vault.current_key_version(versions) if versions else None
    where, mode = key_location(config), key_mode(config)
    try:
        key = vault.configured_key(config)
    except vault.InsecureKeyStoreError as exc:
        return KeyState(where, mode, None, expected, exc.message, "")
    except vault.MasterKeyMissingError as exc:
        fix = "run `appliance init`" if expected is None else _restore_advice(config, expected)
        return KeyState(where, mode, None, expected, exc.message, fix)
    fix = ""
    if expected is None:
        fix = "run `appliance init`"
    elif vault.fingerprint(key) != expected.fingerprint:
        fix = _restore_advice(config, expected)
    return KeyState(where, mode, vault.fingerprint(key), expected, "", fix)


@dataclasses.dataclass(frozen=True, slots=True)
class Initialised:
    """What `initialise` did: the open vault, and the secrets a lost key took with it."""

    vault: vault.Vault
    lost: tuple[str, ...]


async def _replace_lost_key(
    pool: dbpool.Pool,
    config: settings.Settings,
    versions: Sequence[dbvault.VaultKey],
    *,
    actor: str,
) -> Initialised:
    current = vault.current_key_version(versions)
    where = key_location(config)
    try:
        key: bytes | None = vault.configured_key(config)
    except vault.MasterKeyMissingError:
        key = None
    except vault.InsecureKeyStoreError as exc:  # it may well be the right key: not lost
        raise vault.InsecureKeyStoreError(f"{exc.message}; nothing was replaced") from None
    path = vault.key_file_path(config)
    found = None
    if key is None and config.vault.source == "file":
        found = _recoverable(path, current.fingerprint)
    if found is not None or (key is not None and vault.fingerprint(key) == current.fingerprint):
        fix = (
            f"write it as the 32 raw bytes with `{found[1]}`"
            if found is not None
            else "run `appliance init` without --replace-lost-vault-key"
        )
        raise errors.StateError(
            f"the {where} holds the vault's key (fingerprint {current.fingerprint}): nothing is "
            f"lost and nothing was replaced; {fix}"
        )
    if config.vault.source == "file":
        if path.exists() or path.is_symlink():
            kept = path.with_name(f"{path.name}.lost-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}")
            path.rename(kept)
            log.warning(
                "moved the vault key file %s aside to %s",
                path,
                kept,
                extra={"event": "vault.key_moved_aside", "path": str(path), "kept": str(kept)},
            )
        key = vault.create_key_file(path)
    elif key is None:
        raise vault.MasterKeyMissingError(
            f"no new key to replace the lost one with: put a new key in the {where} first "
            f"(`{REPLACE_LOST_KEY_COMMAND}` registers it)"
        )
    new_print = vault.fingerprint(key)
    if new_print in {v.fingerprint for v in versions}:
        raise errors.InputError(
            f"the {where} holds retired key version "
            f"{next(v.key_version for v in versions if v.fingerprint == new_print)}; "
            "use a fresh key"
        )
    lost = await vault.forget_lost_key(pool, new_print, actor=actor)
    log.warning(
        "replaced the lost vault key: %d secret(s) deleted",
        len(lost),
        extra={"event": "vault.key_replaced", "fingerprint": new_print, "lost": len(lost)},
    )
    return Initialised(await vault.open_vault(pool, key, where=where), tuple(lost))
