"""The .deb as built by packaging/deb/build.sh: reproducible, clean, lintian-quiet, complete."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests.support import package, prepare

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = package.ROOT
UNITS = ("appliance.service", "appliance-backup.service", "appliance-backup.timer")
HELPER_UNITS = ("appliance-setup.service", "appliance-provision.service")  # pulled in, not enabled
SCRIPTS = tuple(
    f"deb/{name}" for name in ("preinst", "postinst", "prerm", "postrm", "setup.sh", "appliance.sh")
)
MACOS_SCRIPTS = ("macos/scripts/preinstall", "macos/scripts/postinstall")


def run(*command: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's files and control files, as dpkg would install them."""
    target = tmp_path_factory.mktemp("unpacked")
    assert run("dpkg-deb", "-R", str(deb), str(target)).returncode == 0
    return target


class TestBuild:
    def test_two_builds_are_byte_identical(self, deb: Path, tmp_path: Path) -> None:
        """Built again with the same SOURCE_DATE_EPOCH, the .deb has the same bytes."""
        again = prepare.get("deb-again", tmp_path)
        assert again.name == deb.name
        assert again.read_bytes() == deb.read_bytes()

    def test_no_build_path_inside(self, unpacked: Path) -> None:
        """Neither this tree's path nor the wheelhouse's appears in any packaged file."""
        found = run("grep", "-rlF", "-e", str(ROOT), "-e", str(package.WHEELHOUSE), str(unpacked))
        assert found.returncode == 1, found.stdout

    def test_the_version_is_pyprojects(self, deb: Path) -> None:
        """The package's version and file name come from pyproject.toml."""
        field = run("dpkg-deb", "--field", str(deb), "Version").stdout.strip()
        assert field == package.version()
        assert deb.name == f"appliance_{package.version()}_amd64.deb"

    def test_the_config_is_a_conffile(self, unpacked: Path) -> None:
        """/etc/appliance/appliance.toml is listed as a conffile (an operator's edits survive)."""
        conffiles = (unpacked / "DEBIAN" / "conffiles").read_text().split()
        assert conffiles == ["/etc/appliance/appliance.toml"]

    def test_the_units_and_the_virtualenv_are_inside(self, unpacked: Path) -> None:
        """Units under /lib/systemd/system, the venv's appliance, the wrapper, the setup script."""
        for unit in (*UNITS, *HELPER_UNITS):
            assert (unpacked / "lib/systemd/system" / unit).read_bytes() == (
                ROOT / "systemd" / unit
            ).read_bytes()
        assert (unpacked / "usr/lib/appliance/venv/bin/appliance").exists()
        assert (unpacked / "usr/lib/appliance/venv/bin/python3").readlink() == Path(
            "../../../../bin/python3"
        )
        assert (unpacked / "usr/bin/appliance").read_text().startswith("#!/bin/sh")
        assert not list(unpacked.rglob("__pycache__"))  # compiled by postinst, never shipped

    def test_no_executable_stack(self, unpacked: Path) -> None:
        """No ELF file asks for an executable stack (it would break MemoryDenyWriteExecute=)."""
        checked = run("python3", str(ROOT / "packaging/deb/stage.py"), "elf", str(unpacked))
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout.strip().startswith("2.")

    def test_the_stack_check_can_fail(self, unpacked: Path, tmp_path: Path) -> None:
        """The same check refuses an ELF file whose GNU_STACK header says executable."""
        library = next((unpacked / "usr/lib/appliance/venv/lib").rglob("*.so"))
        data = bytearray(library.read_bytes())
        offset = _gnu_stack_header(bytes(data))
        data[offset + 4] |= 1  # p_flags |= PF_X
        (tmp_path / "bad.so").write_bytes(bytes(data))
        checked = run("python3", str(ROOT / "packaging/deb/stage.py"), "elf", str(tmp_path))
        assert checked.returncode == 1
        assert "bad.so" in checked.stderr


def _gnu_stack_header(data: bytes) -> int:
    phoff: int = struct.unpack_from("<Q", data, 0x20)[0]
    sizes: tuple[int, int] = struct.unpack_from("<HH", data, 0x36)
    phentsize, phnum = sizes
    for index in range(phnum):
        offset: int = phoff + index * phentsize
        if struct.unpack_from("<I", data, offset)[0] == 0x6474E551:
            return offset
    raise AssertionError("no GNU_STACK header")


class TestLintian:
    def test_no_error_and_no_warning(self, deb: Path) -> None:
        """lintian finds neither errors nor warnings (its overrides each give a reason)."""
        checked = run("lintian", "--fail-on", "error,warning", str(deb), timeout=1500.0)
        hints = [line for line in checked.stdout.splitlines() if line[:2] in ("E:", "W:")]
        assert checked.returncode == 0, "\n".join(hints) or checked.stderr

    def test_every_override_has_a_reason(self) -> None:
        """Each override (alone or in a group of overrides) follows a comment that says why."""
        lines = (ROOT / "packaging/deb/lintian-overrides").read_text().splitlines()
        above = ""
        for line in lines:
            if line.startswith("appliance:"):
                assert above.startswith("#"), f"no reason above: {line}"
            else:
                above = line


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
class TestScripts:
    @pytest.mark.parametrize("script", [*SCRIPTS, *MACOS_SCRIPTS])
    def test_installer_scripts_pass_shellcheck(self, script: str) -> None:
        """Every script run at install time (dpkg's and macOS Installer's) passes as POSIX sh."""
        checked = run("shellcheck", "-s", "sh", str(ROOT / "packaging" / script))
        assert checked.returncode == 0, checked.stdout

    @pytest.mark.parametrize("script", ["deb/build.sh", "deb/wheels.sh", "macos/build.sh"])
    def test_build_scripts_pass_shellcheck(self, script: str) -> None:
        """The build scripts pass shellcheck (bash)."""
        checked = run("shellcheck", str(ROOT / "packaging" / script))
        assert checked.returncode == 0, checked.stdout

    def test_the_macos_distribution_names_the_component(self) -> None:
        """productbuild's distribution file is XML whose one choice installs the component."""
        tree = ElementTree.parse(ROOT / "packaging/macos/distribution.xml")  # noqa: S314 - ours
        refs = list(tree.getroot().iter("pkg-ref"))
        assert [r.get("id") for r in refs] == ["com.appliance.pkg", "com.appliance.pkg"]
        assert any(r.text == "appliance-component.pkg" for r in refs)


class TestUnits:
    def test_verify_prints_nothing(self, unpacked: Path, tmp_path: Path) -> None:
        """`systemd-analyze verify` over the installed units: exit 0 and not a word."""
        root = _root_with_host_units(unpacked, tmp_path)
        units = [f"/lib/systemd/system/{u}" for u in (*UNITS, *HELPER_UNITS)]
        checked = run("systemd-analyze", "verify", f"--root={root}", *units)
        assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")

    def test_verify_catches_a_broken_unit(self, unpacked: Path, tmp_path: Path) -> None:
        """The same check speaks up when a unit has a misspelt key (the test can fail)."""
        root = _root_with_host_units(unpacked, tmp_path)
        unit = root / "lib/systemd/system/appliance.service"
        text = unit.read_text()
        unit.unlink()  # a hard link to the unpacked file: replace it, do not write through it
        unit.write_text(text.replace("NoNewPrivileges=", "NoNewPrivilege="))
        checked = run(
            "systemd-analyze", "verify", f"--root={root}", "/lib/systemd/system/appliance.service"
        )
        assert "NoNewPrivilege" in checked.stdout + checked.stderr


def _root_with_host_units(unpacked: Path, tmp_path: Path) -> Path:
    """The package's files over a copy of this host's system units (verify needs the targets)."""
    root = tmp_path / "root"
    shutil.copytree(
        unpacked,
        root,
        symlinks=True,
        ignore=shutil.ignore_patterns("DEBIAN"),
        copy_function=os.link,
    )
    for unit in Path("/lib/systemd/system").iterdir():
        target = root / "lib/systemd/system" / unit.name
        if target.exists() or target.is_symlink():
            continue
        if unit.is_symlink():
            target.symlink_to(unit.readlink())
        elif unit.is_dir():
            shutil.copytree(unit, target, symlinks=True)
        else:
            shutil.copyfile(unit, target)
    return root
