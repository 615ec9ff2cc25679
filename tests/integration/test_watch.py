"""File-watch triggers: real files in temporary folders, tasks in the real Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from appliance import errors, models, settings
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import context, registry
from appliance.ingress import watch
from tests.support import engine as support

pytestmark = pytest.mark.asyncio(loop_scope="session")

SETTLE = 0.3
WAIT_SECONDS = 10.0


def workflows() -> registry.Registry:
    """A registry with the `ingest` workflow the watches start."""
    known = registry.Registry()

    @known.workflow("ingest")
    async def ingest(ctx: context.TaskContext, task_input: Any) -> Any:
        return task_input

    return known


async def tasks_of(pool: dbpool.Pool) -> list[models.Task]:
    """The tasks of the `default` tenant, oldest first."""
    return list(reversed(await dbtasks.list_tasks(pool, tenant_id="default", limit=1000)))


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until `check()` holds, or fail naming `what`."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def task_count(pool: dbpool.Pool, count: int) -> list[models.Task]:
    """Wait until there are `count` tasks; return them."""

    async def reached() -> bool:
        return len(await tasks_of(pool)) >= count

    await eventually(reached, f"{count} task(s)")
    return await tasks_of(pool)


async def settled(watcher: watch.Watcher, count: int) -> None:
    """Wait until the watcher has handled `count` settled paths."""

    async def reached() -> bool:
        return watcher.settled >= count

    await eventually(reached, f"{count} settled path(s)")


@contextlib.asynccontextmanager
async def watching(pool: dbpool.Pool, folder: Path, **fields: Any) -> AsyncIterator[watch.Watcher]:
    """A started Watcher over `folder` (caught up), stopped when the block ends."""
    spec = settings.Watch(path=folder, workflow="ingest", settle_seconds=SETTLE, **fields)
    watcher = watch.Watcher(pool, workflows(), support.engine_settings(), [spec])
    await watcher.start()
    try:
        async with asyncio.timeout(WAIT_SECONDS):
            await watcher.caught_up.wait()
        yield watcher
    finally:
        await watcher.stop()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TestSettling:
    async def test_dropped_file_starts_one_task_after_it_settles(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """A file dropped in a watched folder starts one `created` task once it settled."""
        async with watching(db, tmp_path) as watcher:
            (tmp_path / "a.txt").write_bytes(b"hello")
            (task,) = await task_count(db, 1)
            await settled(watcher, 1)
        info = (tmp_path / "a.txt").stat()
        assert task.input == {
            "path": str(tmp_path.resolve() / "a.txt"),
            "size": 5,
            "mtime_ns": info.st_mtime_ns,
            "sha256": sha256(b"hello"),
            "event": "created",
        }
        assert task.idempotency_key == watch.content_key(
            task.input["path"], 5, info.st_mtime_ns, sha256(b"hello")
        )
        assert len(await tasks_of(db)) == 1

    async def test_file_written_in_chunks_fires_once_after_last_write(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """A file written in several chunks over time fires once, with its final content."""
        async with watching(db, tmp_path) as watcher:
            with (tmp_path / "big.bin").open("wb") as file:
                for _ in range(5):
                    file.write(b"x" * 1000)
                    file.flush()
                    await asyncio.sleep(SETTLE / 3)  # the writer's pace, under the settle time
            await settled(watcher, 1)
        (task,) = await tasks_of(db)
        assert task.input["size"] == 5000
        assert task.input["sha256"] == sha256(b"x" * 5000)


class TestIdempotency:
    async def test_same_content_and_mtime_starts_no_second_task(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """Re-saving the same content with the same mtime starts no second task."""
        path = tmp_path / "a.txt"
        async with watching(db, tmp_path) as watcher:
            path.write_bytes(b"same")
            await task_count(db, 1)
            await settled(watcher, 1)
            mtime_ns = path.stat().st_mtime_ns
            path.write_bytes(b"same")
            os.utime(path, ns=(mtime_ns, mtime_ns))
            await settled(watcher, 2)
        assert len(await tasks_of(db)) == 1

    async def test_changed_content_starts_a_new_task(self, db: dbpool.Pool, tmp_path: Path) -> None:
        """Changed content starts a second, `modified` task."""
        path = tmp_path / "a.txt"
        async with watching(db, tmp_path) as watcher:
            path.write_bytes(b"one")
            await task_count(db, 1)
            await settled(watcher, 1)
            path.write_bytes(b"two!")
            first, second = await task_count(db, 2)
        assert first.input["sha256"] == sha256(b"one")
        assert second.input["event"] == "modified"
        assert second.input["sha256"] == sha256(b"two!")


class TestCatchUp:
    async def test_restart_enqueues_new_files_and_skips_unchanged(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """A new Watcher catches up files added while stopped; unchanged files start nothing."""
        (tmp_path / "old.txt").write_bytes(b"old")
        async with watching(db, tmp_path):
            await task_count(db, 1)
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "new.txt").write_bytes(b"new")
        async with watching(db, tmp_path):
            pass
        old, new = await tasks_of(db)
        assert old.input["event"] == new.input["event"] == "catch-up"
        assert new.input["path"] == str(tmp_path.resolve() / "sub" / "new.txt")
        async with watching(db, tmp_path):
            pass
        assert len(await tasks_of(db)) == 2

    async def test_restart_enqueues_files_deleted_while_stopped(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """A file deleted while the watcher was stopped gets a `deleted` task at the restart."""
        (tmp_path / "a.txt").write_bytes(b"a")
        async with watching(db, tmp_path):
            (created,) = await task_count(db, 1)
        (tmp_path / "a.txt").unlink()
        async with watching(db, tmp_path):
            pass
        _, deleted = await tasks_of(db)
        assert deleted.input == {**created.input, "event": "deleted"}


class TestDeletesAndMoves:
    async def test_delete_starts_a_deleted_task_with_the_last_state(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """Deleting a known file starts one `deleted` task carrying its last known state."""
        async with watching(db, tmp_path):
            (tmp_path / "a.txt").write_bytes(b"a")
            (created,) = await task_count(db, 1)
            (tmp_path / "a.txt").unlink()
            _, deleted = await task_count(db, 2)
        assert deleted.input == {**created.input, "event": "deleted"}

    async def test_move_is_deleted_old_path_and_moved_new_path(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """A move within the folder: `deleted` for the old path, `moved` (from_path) for the new."""
        old, new = tmp_path / "old.txt", tmp_path / "new.txt"
        async with watching(db, tmp_path):
            old.write_bytes(b"payload")
            await task_count(db, 1)
            old.rename(new)
            tasks = await task_count(db, 3)
        by_event = {task.input["event"]: task.input for task in tasks}
        assert by_event["deleted"]["path"] == str(old.resolve())
        assert by_event["moved"]["path"] == str(tmp_path.resolve() / "new.txt")
        assert by_event["moved"]["from_path"] == by_event["deleted"]["path"]
        assert by_event["moved"]["sha256"] == sha256(b"payload")


class TestFiltering:
    async def test_symlink_pointing_outside_is_ignored(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """A symlink whose target lies outside the folder starts nothing, at catch-up or live."""
        folder, outside = tmp_path / "watched", tmp_path / "secret.txt"
        folder.mkdir()
        outside.write_bytes(b"secret")
        (folder / "early.txt").symlink_to(outside)
        async with watching(db, folder) as watcher:
            (folder / "late.txt").symlink_to(outside)
            (folder / "real.txt").write_bytes(b"real")
            await settled(watcher, 1)
        (task,) = await tasks_of(db)
        assert task.input["path"] == str(folder.resolve() / "real.txt")

    async def test_patterns_and_editor_temp_files_filter(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """Only names matching the patterns start tasks; editor temp files never do."""
        async with watching(db, tmp_path, patterns=("*.txt", "*.txt~")) as watcher:
            for name in ("doc.pdf", ".#doc.txt", "doc.txt~", ".doc.txt.swp", "doc.txt"):
                (tmp_path / name).write_bytes(b"x")
            await settled(watcher, 1)
        (task,) = await tasks_of(db)
        assert task.input["path"].endswith("/doc.txt")


class TestErrors:
    async def test_missing_folder_is_a_config_error_naming_it(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """A missing folder fails start with a ConfigError that names it."""
        spec = settings.Watch(path=tmp_path / "nowhere", workflow="ingest")
        watcher = watch.Watcher(db, workflows(), support.engine_settings(), [spec])
        with pytest.raises(errors.ConfigError, match="nowhere"):
            await watcher.start()

    @pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
    async def test_unreadable_folder_is_a_config_error_naming_it(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """An unreadable folder fails start with a ConfigError that names it."""
        folder = tmp_path / "locked"
        folder.mkdir(mode=0o000)
        spec = settings.Watch(path=folder, workflow="ingest")
        watcher = watch.Watcher(db, workflows(), support.engine_settings(), [spec])
        try:
            with pytest.raises(errors.ConfigError, match="locked"):
                await watcher.start()
        finally:
            folder.chmod(0o700)


def _create_files(folder: Path, count: int, matching: int) -> None:
    """`count` empty files, the first `matching` named *.txt, the rest *.dat."""
    flags = os.O_CREAT | os.O_WRONLY
    for i in range(count):
        os.close(os.open(folder / f"f{i:06d}.{'txt' if i < matching else 'dat'}", flags, 0o600))


class TestLargeFolder:
    async def test_catch_up_of_100k_files_does_not_block_the_loop(self, db: dbpool.Pool) -> None:
        """A catch-up scan over 100,000 files keeps the event loop responsive."""
        folder = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="watch-100k-"))
        try:
            await asyncio.to_thread(_create_files, folder, 100_000, 300)
            gaps: list[float] = []
            done = asyncio.Event()

            async def ticker() -> None:
                last = time.monotonic()
                while not done.is_set():
                    await asyncio.sleep(0.005)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            ticking = asyncio.create_task(ticker())
            started = time.monotonic()
            async with watching(db, folder, patterns=("*.txt",)):
                elapsed = time.monotonic() - started
            done.set()
            await ticking
            gap_ms = max(gaps) * 1000
            print(f"catch-up of 100k files: {elapsed:.2f} s, max loop gap {gap_ms:.1f} ms")
            assert max(gaps) < 0.1
            assert len(await dbtasks.list_tasks(db, tenant_id="default", limit=1000)) == 300
        finally:
            await asyncio.to_thread(shutil.rmtree, folder)
