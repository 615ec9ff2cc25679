"""The vault's master key at the daemon's start, in `init` and in `doctor`, run as an operator
runs them: once a key version is recorded, a key that is missing or malformed in any way (see
tests/support/keys.py), from a key file or a systemd credential, is exit 78 before the daemon is
ready, in one line naming where the key was looked for and the fingerprint expected; `init`
never writes a key over it; `doctor` has a vault line."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from appliance import vault
from appliance.db import pool as dbpool
from tests.support import daemon, keys

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

RUN = {"health.port": 0, "health.host": "127.0.0.1", "log.level": "WARNING"}
SOURCES = ("file", "credential")


@dataclasses.dataclass(frozen=True)
class Recorded:
    """A key whose fingerprint the emptied database's vault records, and where it is kept."""

    path: Path
    key: bytes
    fingerprint: str

    def settings(self, source: str) -> tuple[dict[str, Any], dict[str, str]]:
        """The overrides and environment that make `source` read the key at `path`."""
        if source == "file":
            return {"vault.source": "file", "vault.key_file": str(self.path)}, {}
        overrides = {"vault.source": "credential", "vault.credential": self.path.name}
        return overrides, {"CREDENTIALS_DIRECTORY": str(self.path.parent)}


@pytest_asyncio.fixture(loop_scope="session")
async def recorded(db: dbpool.Pool, tmp_path: Path) -> Recorded:
    """A key in a folder of its own (a credentials directory, or a key file's), recorded."""
    folder = tmp_path / "credentials"
    folder.mkdir(mode=0o700)
    path = folder / "appliance-vault-key"
    key = vault.create_key_file(path)
    box = await vault.open_vault(db, key, initialise=True)
    return Recorded(path, key, box.fingerprint)


def error_line(result: daemon.Result) -> str:
    """The one `appliance: error:` line (no traceback anywhere)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("appliance: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


class TestDaemonStart:
    @pytest.mark.parametrize("shape", sorted(keys.SHAPES))
    @pytest.mark.parametrize("source", SOURCES)
    async def test_a_missing_or_malformed_key_stops_the_start(
        self, recorded: Recorded, database_dsn: str, tmp_path: Path, source: str, shape: str
    ) -> None:
        """Exit 78 before ready, one line with the key's path and the expected fingerprint."""
        keys.SHAPES[shape](recorded.path, recorded.key)
        overrides, env = recorded.settings(source)
        result = await daemon.cli(
            "run", folder=tmp_path, dsn=database_dsn, overrides=RUN | overrides, env=env
        )
        assert result.code == 78, result.stderr
        line = error_line(result)
        assert str(recorded.path) in line
        assert recorded.fingerprint in line

    async def test_a_credential_outside_a_unit_stops_the_start(
        self, recorded: Recorded, database_dsn: str, tmp_path: Path
    ) -> None:
        """No $CREDENTIALS_DIRECTORY: exit 78 naming the credential and the fingerprint."""
        overrides, _ = recorded.settings("credential")
        result = await daemon.cli(
            "run", folder=tmp_path, dsn=database_dsn, overrides=RUN | overrides
        )
        assert result.code == 78, result.stderr
        line = error_line(result)
        assert f"LoadCredentialEncrypted={recorded.path.name}" in line
        assert recorded.fingerprint in line

    async def test_another_key_stops_the_start_naming_its_path(
        self, recorded: Recorded, database_dsn: str, tmp_path: Path
    ) -> None:
        """A well-formed key that is not the recorded one: exit 78, path and fingerprint."""
        recorded.path.write_bytes(vault.new_key())
        overrides, _ = recorded.settings("file")
        result = await daemon.cli(
            "run", folder=tmp_path, dsn=database_dsn, overrides=RUN | overrides
        )
        assert result.code == 78, result.stderr
        line = error_line(result)
        assert str(recorded.path) in line
        assert f"expected {recorded.fingerprint}" in line


class TestInit:
    @pytest.mark.parametrize("shape", sorted(keys.SHAPES))
    async def test_init_never_writes_a_key_over_a_recorded_one(
        self, recorded: Recorded, database_dsn: str, tmp_path: Path, shape: str
    ) -> None:
        """The key file is left as it was; the error names the key expected and the fix."""
        keys.SHAPES[shape](recorded.path, recorded.key)
        before = sorted(p.name for p in recorded.path.parent.iterdir())
        content = recorded.path.read_bytes() if recorded.path.is_file() else None
        overrides, _ = recorded.settings("file")
        result = await daemon.cli("init", folder=tmp_path, dsn=database_dsn, overrides=overrides)
        assert result.code == 78, result.stderr
        line = error_line(result)
        assert recorded.fingerprint in line
        fix = "`appliance init --replace-lost-vault-key`"
        if shape in keys.EXPOSED:
            fix = "`ch"
        elif shape in keys.RECOVERABLE:
            fix = "write it as the 32 raw bytes with `"
        assert fix in line
        assert sorted(p.name for p in recorded.path.parent.iterdir()) == before
        assert (recorded.path.read_bytes() if recorded.path.is_file() else None) == content

    async def test_replacing_a_lost_key_deletes_the_secrets_sealed_under_it(
        self, db: dbpool.Pool, recorded: Recorded, database_dsn: str, tmp_path: Path
    ) -> None:
        """A new key, the old file kept, the sealed secrets deleted and listed; run works."""
        box = await vault.open_vault(db, recorded.key)
        await vault.set_secret(
            db,
            box,
            tenant_id="default",
            integration="github",
            workflow="*",
            name="token",
            value=b"sealed-under-the-lost-key",
            actor="test",
        )
        keys.empty(recorded.path, recorded.key)
        overrides, _ = recorded.settings("file")
        result = await daemon.cli(
            "--json",
            "init",
            "--replace-lost-vault-key",
            folder=tmp_path,
            dsn=database_dsn,
            overrides=overrides,
        )
        assert result.code == 0, result.stderr
        assert result.json()["vault_secrets_lost"] == ["default/github/*/token"]
        kept = [p for p in recorded.path.parent.iterdir() if p.name.startswith(".") is False]
        assert len(kept) == 2
        assert await vault.list_secrets(db, tenant_id="default") == []
        new_key = vault.read_key_file(recorded.path)
        assert result.json()["vault"].endswith(vault.fingerprint(new_key))
        async with daemon.running(database_dsn, tmp_path, overrides=overrides):
            pass


class TestDoctor:
    async def test_the_vault_line_says_key_mode_fingerprint_and_overdue(
        self, db: dbpool.Pool, recorded: Recorded, database_dsn: str, tmp_path: Path
    ) -> None:
        """ok: the key file, its mode, the fingerprint matching, how many secrets are overdue."""
        overrides, _ = recorded.settings("file")
        result = await daemon.cli("doctor", folder=tmp_path, dsn=database_dsn, overrides=overrides)
        expected = (
            f"[ok  ] vault: key file {recorded.path} (mode 0600), fingerprint "
            f"{recorded.fingerprint} matches key version 1; no secret overdue"
        )
        assert expected in result.stdout.splitlines(), result.stdout

    @pytest.mark.parametrize("shape", ["missing", "written as hex", "readable by others"])
    async def test_a_bad_key_fails_the_vault_line(
        self, recorded: Recorded, database_dsn: str, tmp_path: Path, shape: str
    ) -> None:
        """FAIL (exit 1) naming the key's path and the expected fingerprint."""
        keys.SHAPES[shape](recorded.path, recorded.key)
        overrides, _ = recorded.settings("file")
        result = await daemon.cli("doctor", folder=tmp_path, dsn=database_dsn, overrides=overrides)
        assert result.code == 1
        line = next(x for x in result.stdout.splitlines() if x.startswith("[FAIL] vault:"))
        assert str(recorded.path) in line
        assert recorded.fingerprint in line

    async def test_an_uninitialised_vault_is_a_warning(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """No key recorded: a warning that tools get no secrets, and the fix `appliance init`."""
        result = await daemon.cli(
            "doctor",
            folder=tmp_path,
            dsn=database_dsn,
            overrides={"vault.key_file": str(tmp_path / "absent.key")},
        )
        lines = result.stdout.splitlines()
        warning = lines.index(next(x for x in lines if x.startswith("[warn] vault:")))
        assert "not initialised" in lines[warning]
        assert lines[warning + 1].strip() == "fix: run `appliance init`"
