"""The wheel carries what the installed appliance needs at run time: migrations and SQL files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.db import migrations

ROOT = Path(__file__).resolve().parents[2]
REPO_MIGRATIONS = sorted((ROOT / "migrations").glob("*.sql"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The wheel built from this checkout, the way `pip wheel` builds it."""
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    built = subprocess.run(
        [*command, "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    [path] = out.glob("appliance-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


class TestWheel:
    def test_it_carries_the_migrations(self, wheel: zipfile.ZipFile) -> None:
        """Every file of the repo's migrations/ is package data, byte for byte."""
        assert REPO_MIGRATIONS
        for path in REPO_MIGRATIONS:
            assert wheel.read(f"appliance/migrations/{path.name}") == path.read_bytes()

    def test_it_carries_the_function_files(self, wheel: zipfile.ZipFile) -> None:
        """Every file of migrations/functions/ is package data, byte for byte."""
        files = sorted((ROOT / "migrations" / "functions").glob("*.sql"))
        assert files
        for path in files:
            assert wheel.read(f"appliance/migrations/functions/{path.name}") == path.read_bytes()

    def test_it_carries_the_first_migration(self, wheel: zipfile.ZipFile) -> None:
        """appliance/migrations/0001_core.sql is in the wheel."""
        assert "appliance/migrations/0001_core.sql" in wheel.namelist()

    def test_it_carries_the_named_queries(self, wheel: zipfile.ZipFile) -> None:
        """Every SQL file of appliance/db/sql is in the wheel, tasks.sql among them."""
        names = set(wheel.namelist())
        assert "appliance/db/sql/tasks.sql" in names
        for path in (ROOT / "appliance" / "db" / "sql").glob("*.sql"):
            assert f"appliance/db/sql/{path.name}" in names


class TestAvailableMigrations:
    def test_every_repo_migration_is_found(self) -> None:
        """`available()` lists every file of the repo's migrations/, in order, with its text."""
        found = migrations.available()
        assert [m.filename for m in found] == [p.name for p in REPO_MIGRATIONS]
        assert [m.text for m in found] == [p.read_text(encoding="utf-8") for p in REPO_MIGRATIONS]
