"""A Debian 12 box in a container: a root filesystem built once with mmdebstrap, booted with
systemd-nspawn, driven from outside with nsenter (no machined, no D-Bus needed on the host).

- `rootfs()`: the cached root filesystem (minbase plus systemd, PostgreSQL, python3 and the
  package's other dependencies), built from the apt mirror this machine already uses, read
  from its apt sources now, never written into the repository. Cached in
  `$APPLIANCE_BOX_CACHE` (default /var/cache/appliance-ci) under a key of the recipe; a lock
  keeps two sessions from building it at once.
- `Box`: a private copy of it that boots (`systemd-nspawn --boot --private-network`, a machine
  name unique to the run, its own cgroup), runs commands inside (`nsenter` into the container's
  PID 1), and powers off. Killed and removed when the block ends, whatever happened.

Needs root, mmdebstrap and systemd-container (scripts/setup.sh installs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

SUITE = "bookworm"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "postgresql",
    "postgresql-client",
    "python3",
    "python3.11",
    "adduser",
    "init-system-helpers",
    "procps",
)
# The image is built in the host's network namespace, where the host's PostgreSQL holds 5432,
# so pg_createcluster picks another port; the box itself runs with a private network.
CUSTOMIZE = 'sed -i "s/^port = .*/port = 5432/" "$1"/etc/postgresql/15/main/postgresql.conf'
# nspawn's own seccomp filter lets through only the system calls it knows; systemd 252 puts
# Landlock's in no group, and the tool processes of the appliance need them.
ALLOWED_SYSCALLS = "landlock_create_ruleset landlock_add_rule landlock_restrict_self"
BUILD_SECONDS = 900.0
BOOT_SECONDS = 120.0
COMMAND_SECONDS = 120.0
RECIPE_VERSION = 1


def cache_dir() -> Path:
    return Path(os.environ.get("APPLIANCE_BOX_CACHE", "/var/cache/appliance-ci"))


def mirrors(sources: Path = Path("/etc/apt")) -> list[str]:
    """This machine's Debian entries for the suite, as one-line `deb URI SUITE COMPONENTS`."""
    lines = [*_deb822_entries(sources), *_one_line_entries(sources)]
    if not lines:
        raise RuntimeError(f"no {SUITE} entry in this machine's apt sources ({sources})")
    return lines


def _deb822_entries(sources: Path) -> list[str]:
    lines: list[str] = []
    for named in sorted(glob.glob(str(sources / "sources.list.d" / "*.sources"))):
        for block in Path(named).read_text(encoding="utf-8").split("\n\n"):
            fields = {
                key.strip(): value.strip()
                for key, _, value in (
                    line.partition(":") for line in block.splitlines() if not line.startswith("#")
                )
            }
            if "deb" not in fields.get("Types", "").split():
                continue
            components = fields.get("Components", "main")
            lines.extend(
                f"deb {uri} {suite} {components}"
                for uri in fields.get("URIs", "").split()
                for suite in fields.get("Suites", "").split()
                if suite.startswith(SUITE)
            )
    return lines


def _one_line_entries(sources: Path) -> list[str]:
    lines: list[str] = []
    for listed in [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*.list"))]:
        if listed.exists():
            for line in listed.read_text(encoding="utf-8").splitlines():
                words = line.split()
                if len(words) >= 4 and words[0] == "deb" and words[2].startswith(SUITE):
                    lines.append(" ".join(words))
    return lines


def _key() -> str:
    recipe = repr((RECIPE_VERSION, SUITE, PACKAGES, CUSTOMIZE))
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def rootfs() -> Path:
    """The cached root filesystem, built first if missing (minutes, from the mirror)."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = cache / f"rootfs-{SUITE}-{_key()}"
    with (cache / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "etc" / "os-release").exists():
            return target
        building = cache / f".building-{uuid.uuid4().hex[:8]}"
        try:
            subprocess.run(
                [
                    "mmdebstrap",
                    "--mode=root",
                    "--variant=minbase",
                    "--quiet",
                    f"--include={','.join(PACKAGES)}",
                    f"--customize-hook={CUSTOMIZE}",
                    SUITE,
                    str(building),
                    *mirrors(),
                ],
                check=True,
                timeout=BUILD_SECONDS,
                capture_output=True,
            )
            building.rename(target)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return target


@dataclasses.dataclass(frozen=True)
class Result:
    """What one command inside the box did."""

    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


class Box:
    """A booted copy of the root filesystem."""

    def __init__(self, root: Path, name: str, log: Path) -> None:
        self.root = root
        self.name = name
        self.log = log
        self._nspawn: asyncio.subprocess.Process | None = None
        self._init = 0
        self._cgroups = [
            Path("/sys/fs/cgroup") / hierarchy / f"appliance-{name}"
            for hierarchy in ("unified", "systemd")
            if (Path("/sys/fs/cgroup") / hierarchy).is_dir()
        ] or [Path("/sys/fs/cgroup") / f"appliance-{name}"]

    @property
    def running(self) -> bool:
        return self._nspawn is not None and self._nspawn.returncode is None

    async def boot(self) -> None:
        """Boot, and wait until systemd says the system is running (every unit started)."""
        for cgroup in self._cgroups:
            cgroup.mkdir(exist_ok=True)
        enter = "; ".join(f"echo $$ > {c}/cgroup.procs" for c in self._cgroups)
        with self.log.open("ab") as log:
            self._nspawn = await asyncio.create_subprocess_exec(
                "sh",
                "-c",
                f'{enter}; exec "$@"',
                "nspawn",
                "systemd-nspawn",
                f"--directory={self.root}",
                "--boot",
                "--register=no",
                "--keep-unit",
                "--private-network",
                f"--machine={self.name}",
                "--console=pipe",
                f"--system-call-filter={ALLOWED_SYSCALLS}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        async with asyncio.timeout(BOOT_SECONDS):
            self._init = await self._find_init()
            # A condition inside another PID namespace: there is no event to wait on.
            while (await self.run("test", "-S", "/run/systemd/private", check=False)).code:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            state = await self.run(
                "systemctl", "is-system-running", "--wait", check=False, timeout=BOOT_SECONDS
            )
        if state.stdout.strip() != "running":
            failed = await self.run("systemctl", "--failed", "--no-legend", check=False)
            raise AssertionError(f"the box booted {state.stdout.strip()}: {failed.stdout}")

    async def _find_init(self) -> int:
        """The container's PID 1: the child of nspawn that runs systemd."""
        assert self._nspawn is not None
        while True:
            if self._nspawn.returncode is not None:
                code = self._nspawn.returncode
                raise AssertionError(f"systemd-nspawn exited {code}: {self.tail()}")
            for stat in Path("/proc").glob("[0-9]*/stat"):
                with contextlib.suppress(OSError):
                    fields = stat.read_text().rsplit(")", 1)
                    command = fields[0].split("(", 1)[1]
                    parent = int(fields[1].split()[1])
                    if parent == self._nspawn.pid and command == "systemd":
                        return int(stat.parent.name)
            await asyncio.sleep(0.1)

    async def run(
        self,
        *command: str,
        check: bool = True,
        timeout: float = COMMAND_SECONDS,
        stdin: bytes | None = None,
    ) -> Result:
        """A command inside the booted box, as root; `check` fails the test on a non-zero exit."""
        process = await asyncio.create_subprocess_exec(
            "nsenter",
            f"--target={self._init}",
            "--all",
            "--",
            *command,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        )
        try:
            async with asyncio.timeout(timeout):
                stdout, stderr = await process.communicate(stdin)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(f"{' '.join(command)} did not end within {timeout}s") from None
        result = Result(
            process.returncode or 0,
            stdout.decode(errors="replace"),
            stderr.decode(errors="replace"),
        )
        if check and result.code != 0:
            raise AssertionError(f"in the box: {' '.join(command)}: {result}")
        return result

    async def on_its_network(self, *command: str) -> None:
        """A command of the host run in the box's network namespace only (the box has no
        iproute2: `ip addr add ...` to give its loopback a tailnet address)."""
        process = await asyncio.create_subprocess_exec(
            "nsenter",
            f"--target={self._init}",
            "--net",
            "--",
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(COMMAND_SECONDS):
            _, stderr = await process.communicate()
        if process.returncode:
            raise AssertionError(f"in the box's network: {' '.join(command)}: {stderr.decode()}")

    def put(self, source: Path, inside: str) -> None:
        """Copy a file of the host into the box's file system."""
        target = self.root / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)

    async def poweroff(self) -> None:
        """A clean shutdown (SIGRTMIN+4 to its systemd), waiting for nspawn to exit."""
        assert self._nspawn is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._init, signal.SIGRTMIN + 4)
        async with asyncio.timeout(BOOT_SECONDS):
            await self._nspawn.wait()

    async def kill(self) -> None:
        if self.running:
            assert self._nspawn is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._nspawn.pid, signal.SIGKILL)
            await self._nspawn.wait()

    def remove_cgroups(self) -> None:
        """nspawn leaves its payload/supervisor cgroups behind; remove ours, deepest first."""
        for top in self._cgroups:
            if not top.exists():
                continue
            for folder in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@contextlib.asynccontextmanager
async def box(work: Path) -> AsyncIterator[Box]:
    """A fresh copy of the root filesystem in `work` (not booted yet); gone afterwards."""
    pristine = await asyncio.to_thread(rootfs)
    name = f"appl-{uuid.uuid4().hex[:8]}"
    root = work / name
    await asyncio.to_thread(
        subprocess.run, ["cp", "-a", "--reflink=auto", str(pristine), str(root)], check=True
    )
    created = Box(root, name, work / f"{name}.log")
    try:
        yield created
    finally:
        await created.kill()
        created.remove_cgroups()
        await asyncio.to_thread(shutil.rmtree, root, True)
