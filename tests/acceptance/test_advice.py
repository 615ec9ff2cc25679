"""Every piece of advice an error of the cluster, vault and secret paths prints is followed here,
as an operator would follow it, and must lead to the command working: a command in backticks is
run as written (`FILE` standing for a file the test prepares), other advice (restore the key) is
done by hand. Each test breaks one thing, runs the command that fails on it, follows the advice,
and runs the command again."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shlex
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from appliance import vault
from appliance.db import pool as dbpool
from tests.support import daemon, keys, workflows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RUN_AS = "nobody" if os.geteuid() == 0 else None
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the run-as-root advice applies as root")
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RUN = {"health.port": 0, "health.host": "127.0.0.1", "log.format": "json", "log.level": "INFO"}


class Box:
    """What the operator's commands run against: a config (overrides and environment) and a
    folder; the advice followed changes the box, not the test's settings."""

    def __init__(self, folder: Path, dsn: str | None, overrides: Mapping[str, Any]) -> None:
        self.folder = folder
        self.dsn = dsn
        self.overrides = dict(overrides)
        self.env: dict[str, str] = {}

    async def cli(self, *args: str) -> daemon.Result:
        return await daemon.cli(
            *args,
            folder=self.folder,
            dsn=self.dsn,
            overrides=self.overrides,
            env=self.env,
            timeout=120,
        )

    async def run(self) -> daemon.Result | None:
        """`appliance run`: None once it is ready (then stopped cleanly), else what it said."""
        env = daemon.environment(self.dsn, self.folder, RUN | self.overrides) | self.env
        process = await asyncio.create_subprocess_exec(
            *daemon.command(),
            "--config",
            str(daemon.config_file(self.folder)),
            "run",
            env=env,
            cwd=str(self.folder),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        started = daemon.Daemon(process, "run", self.folder / "run.log")
        try:
            await started.wait_for_log("daemon.ready", timeout=90)
        except AssertionError:
            code = await started.wait_exit()
            return daemon.Result(code, "", "\n".join(started.lines))
        assert await started.terminate() == 0
        return None

    async def follow(self, said: str, command_start: str, file: Path | None = None) -> str:
        """Run the command in backticks that starts with `command_start`; the command."""
        [command] = [c for c in advice(said) if c.startswith(command_start)]
        argv = [str(file) if word == "FILE" else word for word in shlex.split(command)]
        if argv[0] == "appliance":
            result = await self.cli(*argv[1:])
            assert result.code == 0, f"{command}: exit {result.code}\n{result.stderr}"
        else:  # a shell command, as the operator would paste it
            done = await asyncio.create_subprocess_shell(
                command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            output, _ = await done.communicate()
            assert done.returncode == 0, f"{command}: {output.decode()}"
        return command

    async def refused(self, code: int = 78) -> str:
        """`appliance run` must stop before ready with `code`; what it said."""
        result = await self.run()
        assert result is not None, "the daemon got ready"
        assert result.code == code, result.stderr
        return result.stderr


def advice(said: str) -> list[str]:
    """The commands an error tells the operator to run (in backticks)."""
    return re.findall(r"`([^`]+)`", error_of(said))


def error_of(said: str) -> str:
    """The one `appliance: error:` line, which carries the advice (no traceback)."""
    assert "Traceback" not in said, said
    [line] = [x for x in said.splitlines() if x.startswith("appliance: error:")]
    return line


def postgres_processes(state_dir: Path) -> list[int]:
    """Processes whose command line names the cluster's data directory."""
    data = str(state_dir / "postgres").encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if data in argv:
            found.append(int(entry.name))
    return found


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short folder under /tmp (unix socket paths are short) the Postgres user may enter."""
    folder = Path(tempfile.mkdtemp(prefix="apa"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for state in [folder, *folder.rglob("state")]:
            for pid in postgres_processes(state):
                os.kill(pid, 9)
        shutil.rmtree(folder, ignore_errors=True)


def embedded_box(tmp_path: Path, state_dir: Path) -> Box:
    """A box on the embedded cluster of `state_dir`."""
    overrides: dict[str, Any] = {"state_dir": str(state_dir)}
    if RUN_AS:
        overrides["database.embedded_user"] = RUN_AS
    return Box(tmp_path, None, overrides)


@pytest_asyncio.fixture(loop_scope="session")
async def key_box(db: dbpool.Pool, database_dsn: str, tmp_path: Path) -> tuple[Box, Path, bytes]:
    """A box on the session database whose vault records the key in its key file."""
    path = tmp_path / "keys" / "vault.key"
    path.parent.mkdir()
    key = vault.create_key_file(path)
    await vault.open_vault(db, key, initialise=True)
    return Box(tmp_path, database_dsn, {"vault.key_file": str(path)}), path, key


class TestClusterAdvice:
    async def test_run_init_first(self, short_dir: Path, tmp_path: Path) -> None:
        """A command on a box never initialised: `appliance init`, then the command works."""
        box = embedded_box(tmp_path, short_dir / "state")
        failed = await box.cli("secrets", "list")
        assert failed.code == 78
        await box.follow(failed.stderr, "appliance init")
        assert (await box.cli("secrets", "list")).code == 0

    async def test_a_vault_never_initialised(self, short_dir: Path, tmp_path: Path) -> None:
        """`secrets set` on a migrated box without a vault key: `appliance init` makes one."""
        box = embedded_box(tmp_path, short_dir / "state")
        (tmp_path / "value").write_text("s3cr3t")
        assert (await box.cli("migrate")).code == 0
        secret = ("secrets", "set", "github", "token", "--from-file", str(tmp_path / "value"))
        failed = await box.cli(*secret)
        assert failed.code == 78
        await box.follow(failed.stderr, "appliance init")
        assert (await box.cli(*secret)).code == 0

    async def test_the_signing_secret_the_daemon_asks_for(
        self, short_dir: Path, tmp_path: Path
    ) -> None:
        """The `secrets set` that `run` asks for works with no daemon; then `run` starts."""
        box = embedded_box(tmp_path, short_dir / "state")
        assert (await box.cli("init")).code == 0
        box.overrides |= {
            "ingress.enabled": True,
            "ingress.host": "127.0.0.1",
            "ingress.port": 0,
            "ingress.sources": [
                {
                    "tenant": "default",
                    "name": "shop",
                    "secret_ref": "webhook/shop",
                    "workflow": workflows.COUNTED,
                }
            ],
        }
        command = error_of(await box.refused()).partition("set it with: ")[2]
        (tmp_path / "secret").write_text(WEBHOOK_SECRET + "\n")
        argv = [str(tmp_path / "secret") if w == "FILE" else w for w in shlex.split(command)]
        assert argv[:3] == ["appliance", "secrets", "set"]
        followed = await box.cli(*argv[1:])
        assert followed.code == 0, followed.stderr
        assert await box.run() is None
        assert postgres_processes(short_dir / "state") == []

    @root_only
    async def test_a_state_dir_postgres_cannot_enter(self, short_dir: Path, tmp_path: Path) -> None:
        """A state dir inside a folder only root may enter: `chmod o+x` it, then init works."""
        closed = short_dir / "closed"
        closed.mkdir(mode=0o700)
        box = embedded_box(tmp_path, closed / "state")
        failed = await box.cli("init")
        assert failed.code == 78
        await box.follow(failed.stderr, "chmod o+x")
        assert (await box.cli("init")).code == 0, "init after chmod"

    @root_only
    async def test_no_user_to_run_postgres_as(self, short_dir: Path, tmp_path: Path) -> None:
        """As root with no such service user: the useradd printed creates it; init works."""
        user = f"ap{uuid.uuid4().hex[:10]}"
        box = embedded_box(tmp_path, short_dir / "state")
        box.overrides["database.embedded_user"] = user
        failed = await box.cli("init")
        assert failed.code == 77
        try:
            await box.follow(failed.stderr, "useradd")
            assert pwd.getpwnam(user).pw_uid != 0
            result = await box.cli("init")
            assert result.code == 0, result.stderr
        finally:
            removed = await asyncio.create_subprocess_exec("userdel", user)
            await removed.wait()


class TestVaultAdvice:
    @pytest.mark.parametrize(
        ("shape", "command_start"),
        [
            ("missing", "appliance init --replace-lost-vault-key"),
            ("empty", "appliance init --replace-lost-vault-key"),
            ("written as hex", "umask 077; xxd -r -p"),
            ("written as base64", "umask 077; base64 -d"),
            ("line ending added", "truncate -s 32"),
            ("one byte long", "truncate -s 32"),
            ("readable by others", "chmod 600"),
            ("owned by another user", "chown"),
        ],
    )
    async def test_the_daemon_refusing_its_key(
        self, key_box: tuple[Box, Path, bytes], shape: str, command_start: str
    ) -> None:
        """Each key problem at the start: the command printed fixes it, the daemon starts."""
        if shape not in keys.SHAPES:
            pytest.skip("only root can give a file away")
        box, path, key = key_box
        keys.SHAPES[shape](path, key)
        await box.follow(await box.refused(), command_start)
        assert await box.run() is None

    async def test_restoring_the_key(self, key_box: tuple[Box, Path, bytes]) -> None:
        """`restore that key to PATH`: put the backup back there, and the daemon starts."""
        box, path, key = key_box
        keys.missing(path, key)
        assert f"restore that key to {path}" in error_of(await box.refused())
        path.write_bytes(key)
        path.chmod(0o600)
        assert await box.run() is None

    async def test_another_key(self, key_box: tuple[Box, Path, bytes]) -> None:
        """A key that is not the recorded one: replacing the lost key lets the daemon start."""
        box, path, _ = key_box
        path.write_bytes(vault.new_key())
        await box.follow(await box.refused(), "appliance init --replace-lost-vault-key")
        assert await box.run() is None

    async def test_a_credential_outside_its_unit(self, key_box: tuple[Box, Path, bytes]) -> None:
        """With the credential in $CREDENTIALS_DIRECTORY, as the unit line gives it, it starts."""
        box, path, _ = key_box
        box.overrides |= {"vault.source": "credential", "vault.credential": path.name}
        said = await box.refused()
        assert f"LoadCredentialEncrypted={path.name}:" in advice(said)[0]
        box.env["CREDENTIALS_DIRECTORY"] = str(path.parent)
        assert await box.run() is None

    async def test_init_with_a_malformed_key_before_any_is_recorded(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """`mv` the bad file away, `appliance init` again: a new key, recorded."""
        path = tmp_path / "vault.key"
        keys.empty(path, b"")
        box = Box(tmp_path, database_dsn, {"vault.key_file": str(path)})
        failed = await box.cli("init")
        assert failed.code == 78
        await box.follow(failed.stderr, "mv ")
        await box.follow(failed.stderr, "appliance init")
        assert len(vault.read_key_file(path)) == 32

    async def test_replacing_a_key_that_is_not_lost(self, key_box: tuple[Box, Path, bytes]) -> None:
        """--replace-lost-vault-key with the right key there: plain `appliance init` works."""
        box, _, _ = key_box
        failed = await box.cli("init", "--replace-lost-vault-key")
        assert failed.code == 1
        await box.follow(failed.stderr, "appliance init")

    async def test_doctor_on_a_vault_never_initialised(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """doctor's `appliance init` fix for the vault line turns it ok."""
        box = Box(tmp_path, database_dsn, {"vault.key_file": str(tmp_path / "vault.key")})
        lines = (await box.cli("doctor")).stdout.splitlines()
        fix = lines[lines.index(next(x for x in lines if x.startswith("[warn] vault:"))) + 1]
        await box.follow(f"appliance: error: {fix}", "appliance init")
        after = await box.cli("doctor")
        assert any(x.startswith("[ok  ] vault:") for x in after.stdout.splitlines())


class TestSecretAdvice:
    async def test_a_secret_for_a_tenant_not_created(
        self, key_box: tuple[Box, Path, bytes], tmp_path: Path
    ) -> None:
        """`appliance tenants add T` as printed, and the secret is stored."""
        box, _, _ = key_box
        (tmp_path / "value").write_text("s3cr3t")
        value = str(tmp_path / "value")
        secret = ("secrets", "set", "github", "token", "--tenant", "newco", "--from-file", value)
        failed = await box.cli(*secret)
        assert failed.code == 65
        await box.follow(failed.stderr, "appliance tenants add")
        assert (await box.cli(*secret)).code == 0
