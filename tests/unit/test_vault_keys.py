"""The vault's master key sources and its sealing of values (edge.md section 5, target T10)."""

from __future__ import annotations

import base64
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.backend
import pytest
from keyring.backends import SecretService, fail, null

from appliance import errors, vault
from tests.support import keys

SCOPE = vault.Scope("acme", "github", "triage", "token")


class PlaintextKeyring(keyring.backend.KeyringBackend):
    """Stands in for keyrings.alt's PlaintextKeyring: stores values as they are."""

    priority = 0.5

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.values: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.values.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.values[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        del self.values[(service, username)]


class LookalikeKeyring(SecretService.Keyring):
    """A subclass of a secure backend, which could do anything with the value."""


@pytest.fixture
def restore_keyring() -> Iterator[None]:
    """Put back whatever keyring backend was configured before the test."""
    before = keyring.get_keyring()
    yield
    keyring.set_keyring(before)


def _key_file(folder: Path, mode: int) -> Path:
    path = folder / "vault.key"
    path.write_bytes(vault.new_key())
    path.chmod(mode)
    return path


class TestKeyFile:
    def test_private_key_file_is_read(self, tmp_path: Path) -> None:
        """A 0600 key file owned by us yields its 32 bytes."""
        path = _key_file(tmp_path, 0o600)
        assert vault.load_master_key("file", path=path) == path.read_bytes()

    @pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
    def test_readable_by_others_is_refused(self, tmp_path: Path, mode: int) -> None:
        """A key file group or others can read is refused with exit 78 and the chmod fix."""
        path = _key_file(tmp_path, mode)
        with pytest.raises(vault.InsecureKeyStoreError, match="chmod 600") as caught:
            vault.load_master_key("file", path=path)
        assert caught.value.exit_code == 78

    def test_missing_key_file_is_explicit(self, tmp_path: Path) -> None:
        """A key file that does not exist is a configuration error naming the path."""
        with pytest.raises(vault.MasterKeyMissingError, match="does not exist"):
            vault.load_master_key("file", path=tmp_path / "absent.key")

    def test_wrong_length_is_refused(self, tmp_path: Path) -> None:
        """A key file that is not 32 bytes is refused, never padded or truncated."""
        path = tmp_path / "short.key"
        path.write_bytes(b"x" * 31)
        path.chmod(0o600)
        with pytest.raises(vault.MasterKeyMissingError, match="31 bytes"):
            vault.read_key_file(path)

    @pytest.mark.parametrize(
        ("shape", "said"),
        [
            ("empty", "is empty"),
            ("written as hex", "a key written as hex text"),
            ("written as base64", "a key written as base64 text"),
            ("line ending added", "a line ending or spaces were added to it"),
        ],
    )
    def test_a_key_of_the_wrong_shape_says_what_it_looks_like(
        self, tmp_path: Path, shape: str, said: str
    ) -> None:
        """Empty, hex or base64 text, a line ending: named, with the 32 raw bytes expected."""
        path = _key_file(tmp_path, 0o600)
        keys.SHAPES[shape](path, path.read_bytes())
        with pytest.raises(vault.MasterKeyMissingError) as caught:
            vault.read_key_file(path)
        assert said in caught.value.message
        assert "expected 32 raw bytes" in caught.value.message

    def test_create_key_file_is_private(self, tmp_path: Path) -> None:
        """A created key file has mode 0600 and holds the key returned."""
        path = tmp_path / "vault.key"
        key = vault.create_key_file(path)
        assert (path.stat().st_mode & 0o777, path.read_bytes()) == (0o600, key)
        assert len(key) == 32

    def test_create_key_file_never_overwrites(self, tmp_path: Path) -> None:
        """Creating a key file where one exists fails and leaves the old key and no stray file."""
        path = tmp_path / "vault.key"
        first = vault.create_key_file(path)
        with pytest.raises(errors.StateError, match="never overwritten"):
            vault.create_key_file(path)
        assert path.read_bytes() == first
        assert sorted(p.name for p in tmp_path.iterdir()) == ["vault.key"]

    def test_owner_is_the_effective_user(self, tmp_path: Path) -> None:
        """A key file owned by the effective uid (the daemon's user) passes the owner check."""
        path = _key_file(tmp_path, 0o600)
        assert path.stat().st_uid == os.geteuid()
        vault.check_private_file(path)


class TestCredential:
    def test_credential_is_read(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The key comes from $CREDENTIALS_DIRECTORY/<name>."""
        path = _key_file(tmp_path, 0o400)
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
        key = vault.load_master_key("credential", credential=path.name)
        assert key == path.read_bytes()

    def test_without_credentials_directory(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Outside a unit with LoadCredentialEncrypted= the error names the directive."""
        monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
        with pytest.raises(vault.MasterKeyMissingError, match="LoadCredentialEncrypted="):
            vault.load_master_key("credential")


@pytest.mark.usefixtures("restore_keyring")
class TestKeyring:
    def test_fail_backend_is_refused(self) -> None:
        """keyring's fail backend (headless Linux, no D-Bus) is refused, exit 78."""
        keyring.set_keyring(fail.Keyring())  # type: ignore[no-untyped-call]
        with pytest.raises(vault.InsecureKeyStoreError, match=r"fail\.Keyring") as caught:
            vault.load_master_key("keyring")
        assert caught.value.exit_code == 78

    def test_null_backend_is_refused(self) -> None:
        """keyring's null backend is refused."""
        keyring.set_keyring(null.Keyring())  # type: ignore[no-untyped-call]
        with pytest.raises(vault.InsecureKeyStoreError, match=r"null\.Keyring"):
            vault.load_master_key("keyring")

    def test_plaintext_backend_is_refused_even_with_a_key(self) -> None:
        """A plaintext backend holding a valid key is still refused, never used quietly."""
        backend = PlaintextKeyring()
        backend.set_password("appliance", "vault-master-key", base64.b64encode(b"k" * 32).decode())
        keyring.set_keyring(backend)
        with pytest.raises(vault.InsecureKeyStoreError, match="PlaintextKeyring"):
            vault.load_master_key("keyring")

    def test_plaintext_backend_cannot_store(self) -> None:
        """`init` refuses to put a key into a plaintext backend, and nothing is written."""
        backend = PlaintextKeyring()
        with pytest.raises(vault.InsecureKeyStoreError):
            vault.store_in_keyring(vault.new_key(), backend)
        assert backend.values == {}

    def test_subclass_of_secure_backend_is_refused(self) -> None:
        """Only the exact secure classes pass, not something derived from them."""
        with pytest.raises(vault.InsecureKeyStoreError):
            vault.check_keyring_backend(LookalikeKeyring())  # type: ignore[no-untyped-call]

    @pytest.mark.skipif(sys.platform == "darwin", reason="Secret Service is the Linux backend")
    def test_secret_service_without_dbus_is_explicit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without a D-Bus session the explicit Linux backend fails loudly, naming the cause."""
        monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
        with pytest.raises(vault.MasterKeyMissingError, match="DBUS_SESSION_BUS_ADDRESS"):
            vault.secure_keyring_backend()

    def test_secret_service_is_accepted(self) -> None:
        """The Secret Service backend passes the class check."""
        vault.check_keyring_backend(SecretService.Keyring())  # type: ignore[no-untyped-call]


class TestFingerprint:
    def test_fingerprint_is_stable(self) -> None:
        """The same key always has the same fingerprint (a known answer)."""
        assert vault.fingerprint(bytes(32)) == vault.fingerprint(bytes(32))
        assert vault.fingerprint(bytes(32)) == "b04ed47f6b7445e10b092115ce827293"

    def test_fingerprint_differs_per_key(self) -> None:
        """Two keys have two fingerprints."""
        assert vault.fingerprint(bytes(32)) != vault.fingerprint(b"\x01" + bytes(31))

    def test_fingerprint_does_not_reveal_the_key(self) -> None:
        """The fingerprint is not the key or its plain hash."""
        key = vault.new_key()
        assert key.hex() not in vault.fingerprint(key)
        assert len(vault.fingerprint(key)) == 32


class TestSealing:
    def test_round_trip(self) -> None:
        """A sealed value opens to itself under its scope."""
        box = vault.Vault({1: vault.new_key()}, current=1)
        version, sealed = box.seal(SCOPE, b"s3cret")
        assert box.open(SCOPE, version, sealed) == b"s3cret"

    def test_fresh_nonce_per_value(self) -> None:
        """The same value sealed twice gives two different ciphertexts."""
        box = vault.Vault({1: vault.new_key()}, current=1)
        assert box.seal(SCOPE, b"same")[1] != box.seal(SCOPE, b"same")[1]

    def test_ciphertext_hides_the_value(self) -> None:
        """The ciphertext does not contain the value."""
        box = vault.Vault({1: vault.new_key()}, current=1)
        assert b"canary-value" not in box.seal(SCOPE, b"canary-value")[1]

    def test_tampered_ciphertext_fails(self) -> None:
        """Flipping one bit of the ciphertext fails to open it."""
        box = vault.Vault({1: vault.new_key()}, current=1)
        version, sealed = box.seal(SCOPE, b"s3cret")
        tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
        with pytest.raises(vault.SecretIntegrityError, match="altered"):
            box.open(SCOPE, version, tampered)

    @pytest.mark.parametrize(
        "other",
        [
            vault.Scope("globex", "github", "triage", "token"),
            vault.Scope("acme", "gitlab", "triage", "token"),
            vault.Scope("acme", "github", "*", "token"),
            vault.Scope("acme", "github", "triage", "token2"),
        ],
        ids=["tenant", "integration", "workflow", "name"],
    )
    def test_moved_to_another_scope_fails(self, other: vault.Scope) -> None:
        """A ciphertext copied into another scope does not open there."""
        box = vault.Vault({1: vault.new_key()}, current=1)
        version, sealed = box.seal(SCOPE, b"s3cret")
        with pytest.raises(vault.SecretIntegrityError, match="another scope"):
            box.open(other, version, sealed)

    def test_wrong_key_fails(self) -> None:
        """A value sealed under one key does not open under another of the same version."""
        version, sealed = vault.Vault({1: vault.new_key()}, current=1).seal(SCOPE, b"s3cret")
        with pytest.raises(vault.SecretIntegrityError):
            vault.Vault({1: vault.new_key()}, current=1).open(SCOPE, version, sealed)

    def test_repr_hides_the_key(self) -> None:
        """The vault's repr names the fingerprint, never the key."""
        key = vault.new_key()
        assert key.hex() not in repr(vault.Vault({1: key}, current=1))


class TestReadValue:
    def test_stdin_drops_one_newline(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A value piped on stdin loses exactly one trailing newline."""
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"tok\n\n")))
        assert vault.read_value("stdin") == b"tok\n"

    def test_file_is_verbatim(self, tmp_path: Path) -> None:
        """A value read from a file is kept byte for byte."""
        path = tmp_path / "value"
        path.write_bytes(b"\x00bin\n")
        assert vault.read_value("file", path) == b"\x00bin\n"

    def test_empty_value_is_refused(self, tmp_path: Path) -> None:
        """An empty value is bad input."""
        path = tmp_path / "value"
        path.write_bytes(b"")
        with pytest.raises(errors.InputError, match="empty"):
            vault.read_value("file", path)

    def test_file_source_needs_a_path(self) -> None:
        """Reading from a file without a path is a usage error."""
        with pytest.raises(errors.UsageError):
            vault.read_value("file", None)
