"""File-watch triggers: a file that settles in a watched folder starts a task.

The daemon composes it (`watches` come from the settings):

    watcher = watch.Watcher(pool, registry.registry, config.engine, config.watches)
    await watcher.start()        # ConfigError if a folder is missing or unreadable
    ...
    await watcher.stop()         # before the pool closes

How it works:

- One watchdog `Observer` (inotify, FSEvents, kqueue: whatever the OS offers) watches every
  folder. Its threads filter names and take a `stat`, then hand the path to the event loop with
  `loop.call_soon_threadsafe`; the loop never blocks on the disk (stat, hashing and the scan run
  in threads).
- Debounce: every event of a path restarts its settle timer. When the timer runs out the file is
  stat'ed again; it has settled when its size and mtime are those seen at the last event,
  otherwise the timer starts again. A file still being written fires once, after its last write.
- Idempotency: a present file is submitted under `file:` + sha256(path, size, mtime_ns, sha256
  of its content). The key lives in Postgres, so the same file state never starts two tasks,
  across restarts too. A deletion is keyed on the path and the last known state it ends.
- Moves: a move within a folder is two tasks, one per path, so that the latest task of a path
  always tells whether it exists: `deleted` for the old path, `moved` (input `from_path`) for
  the new one. A move into the folder is `created`, a move out of it `deleted`.
- Catch-up at start: the watch's earlier tasks (a paged query over `tasks`, one pass) give the
  last known state of each path; a scan in a thread (`os.scandir`, batches handed to the loop)
  hashes and submits only files whose size or mtime differ from it (the rsync quick check), and
  submits `deleted` for known files that are gone. Unchanged files cost one `stat` each.
- Symlinks: a link whose target resolves outside its folder is ignored, never followed; linked
  directories are not descended into. Editor temp files (`.#x`, `x~`, `*.swp`...) are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import hashlib
import logging
import mimetypes
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from watchdog import events, observers
from watchdog.observers import api as observer_api

from appliance import errors, models, settings, triggers
from appliance.db import pool as dbpool
from appliance.db import watch as dbwatch
from appliance.engine import registry, submission

log = logging.getLogger(__name__)
CHARS_PER_TOKEN = 4  # what `attach_tokens` counts a token as

Event = Literal["created", "modified", "moved", "deleted", "catch-up"]
EDITOR_TEMP_NAMES = (".#*", "*~", "#*#", "*.swp", "*.swo", "*.swx", ".~lock.*#", "4913")
SCAN_BATCH = 1000
ACTOR = "watch"


@dataclasses.dataclass(frozen=True, slots=True)
class _Stat:
    size: int
    mtime_ns: int


@dataclasses.dataclass(frozen=True, slots=True)
class _State:
    """The last state of a path a task was submitted for."""

    size: int
    mtime_ns: int
    sha256: str
    deleted: bool = False


@dataclasses.dataclass(slots=True)
class _Pending:
    seen: _Stat | None
    moved_from: str | None = None
    timer: asyncio.TimerHandle | None = None
    generation: int = 0


@dataclasses.dataclass(slots=True)
class _Folder:
    watch: settings.Watch
    root: Path
    known: dict[str, _State] = dataclasses.field(default_factory=dict)
    pending: dict[str, _Pending] = dataclasses.field(default_factory=dict)

    def relative(self, path: str) -> str | None:
        """The path relative to the folder, or None when it is outside or not watched."""
        try:
            relative = Path(path).relative_to(self.root)
        except ValueError:
            return None
        parts = relative.parts
        if not parts or (not self.watch.recursive and len(parts) > 1):
            return None
        return relative.as_posix()

    def matches(self, path: str) -> bool:
        relative = self.relative(path)
        if relative is None:
            return False
        name = relative.rsplit("/", 1)[-1]
        if any(fnmatch.fnmatchcase(name, temp) for temp in EDITOR_TEMP_NAMES):
            return False
        return any(fnmatch.fnmatchcase(relative, pattern) for pattern in self.watch.patterns)


def content_key(path: str, size: int, mtime_ns: int, sha256: str) -> str:
    """The idempotency key of one state of a file."""
    digest = hashlib.sha256(f"{path}\0{size}\0{mtime_ns}\0{sha256}".encode()).hexdigest()
    return f"file:{digest}"


def deletion_key(path: str, last: _State) -> str:
    """The idempotency key of the deletion that ends a file's last known state."""
    marker = f"deleted\0{path}\0{last.size}\0{last.mtime_ns}\0{last.sha256}"
    return f"file:{hashlib.sha256(marker.encode()).hexdigest()}"


def _observe(root: Path, path: str) -> _Stat | None:
    """Size and mtime of a regular file (through a link that stays inside `root`), else None."""
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            if not Path(path).resolve(strict=True).is_relative_to(root):
                return None
            info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError, RuntimeError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return _Stat(info.st_size, info.st_mtime_ns)


def _hash(root: Path, path: str) -> _State | None:
    """The file's state with its content hash; None if it vanished or changed while read."""
    before = _observe(root, path)
    if before is None:
        return None
    try:
        with open(path, "rb") as file:
            sha256 = hashlib.file_digest(file, "sha256").hexdigest()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if _observe(root, path) != before:
        return None
    return _State(before.size, before.mtime_ns, sha256)


def _scan(folder: _Folder) -> Iterator[list[tuple[str, _Stat]]]:
    """Batches of (path, stat) of the matching files, walked with `os.scandir`, links unfollowed."""
    batch: list[tuple[str, _Stat]] = []
    examined = 0
    stack = [str(folder.root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError as exc:
            log.warning("watch scan skips a folder: %s", exc, extra={"event": "watch.scan_skip"})
            continue
        for entry in entries:
            examined += 1
            if examined % SCAN_BATCH == 0:  # hand back often, so stop() is never kept waiting
                yield batch
                batch = []
            if entry.is_dir(follow_symlinks=False):
                if folder.watch.recursive:
                    stack.append(entry.path)
                continue
            if not folder.matches(entry.path):
                continue
            observed = _observe(folder.root, entry.path)
            if observed is not None:
                batch.append((entry.path, observed))
    if batch:
        yield batch


def _hash_all(root: Path, paths: Sequence[str]) -> list[tuple[str, _State | None]]:
    return [(path, _hash(root, path)) for path in paths]


class _Handler(events.FileSystemEventHandler):
    """Runs in watchdog's thread: filters, stats, and hands paths to the event loop."""

    def __init__(self, watcher: Watcher, folder: _Folder) -> None:
        self._watcher = watcher
        self._folder = folder

    def on_any_event(self, event: events.FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed_no_write"):
            return
        src = os.fsdecode(event.src_path)
        if event.event_type == "moved":
            dest = os.fsdecode(event.dest_path)
            self._touch(src, None)
            self._touch(dest, src if self._folder.matches(src) else None)
        else:
            self._touch(src, None)

    def _touch(self, path: str, moved_from: str | None) -> None:
        if not self._folder.matches(path):
            return
        observed = _observe(self._folder.root, path)
        with contextlib.suppress(RuntimeError):  # the loop closed while the observer stops
            self._watcher.loop.call_soon_threadsafe(
                self._watcher.touch, self._folder, path, observed, moved_from
            )


class Watcher:
    """Watches folders and submits a task for each file that settles, idempotently."""

    def __init__(
        self,
        pool: dbpool.Pool,
        workflows: registry.Registry,
        engine: settings.EngineSettings,
        watches: Sequence[settings.Watch],
    ) -> None:
        self._pool = pool
        self._workflows = workflows
        self._engine = engine
        self._watches = tuple(watches)
        self._folders: list[_Folder] = []
        self._observer: observer_api.BaseObserver | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.loop = asyncio.get_running_loop()
        self.caught_up = asyncio.Event()
        """Set once the catch-up scan of every folder has finished."""
        self.settled = 0
        """How many settled paths were handled (submitted or found unchanged)."""

    async def start(self) -> None:
        """Check the folders, start observing, then catch up in the background."""
        for watch in self._watches:
            self._workflows.get(watch.workflow)
            self._folders.append(_Folder(watch, await asyncio.to_thread(_checked_root, watch)))
        observer = observers.Observer()
        for folder in self._folders:
            observer.schedule(
                _Handler(self, folder), str(folder.root), recursive=folder.watch.recursive
            )
        await asyncio.to_thread(observer.start)
        self._observer = observer
        self._spawn(self._catch_up(), "watch.catch_up")

    async def stop(self) -> None:
        """Stop observing; cancel pending timers and work in progress."""
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            await asyncio.to_thread(observer.join)
        for folder in self._folders:
            for pending in folder.pending.values():
                if pending.timer is not None:
                    pending.timer.cancel()
            folder.pending.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def touch(self, folder: _Folder, path: str, seen: _Stat | None, moved_from: str | None) -> None:
        """An event on `path` (in the loop): restart its settle timer."""
        if self._observer is None:
            return
        pending = folder.pending.get(path)
        if pending is None:
            pending = folder.pending[path] = _Pending(seen)
        pending.seen = seen
        if moved_from is not None:
            pending.moved_from = moved_from
        self._arm(folder, path, pending)

    def _arm(self, folder: _Folder, path: str, pending: _Pending) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
        pending.generation += 1
        generation = pending.generation
        pending.timer = self.loop.call_later(
            folder.watch.settle_seconds,
            lambda: self._spawn(self._settle(folder, path, pending, generation), "watch.settle"),
        )

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "file watch failed: %s",
                task.exception(),
                exc_info=task.exception(),
                extra={"event": "watch.failed"},
            )

    async def _settle(self, folder: _Folder, path: str, pending: _Pending, generation: int) -> None:
        def stale() -> bool:  # a newer event re-armed the timer meanwhile, or the watcher stopped
            return folder.pending.get(path) is not pending or pending.generation != generation

        now = await asyncio.to_thread(_observe, folder.root, path)
        if stale():
            return
        if now != pending.seen:
            pending.seen = now
            self._arm(folder, path, pending)
            return
        state = None if now is None else await asyncio.to_thread(_hash, folder.root, path)
        if stale():
            return
        if now is not None and state is None:
            log.debug("file changed or vanished while hashed: %s", path)
            pending.seen = await asyncio.to_thread(_observe, folder.root, path)
            self._arm(folder, path, pending)
            return
        del folder.pending[path]
        if state is None:
            await self._submit_deletion(folder, path)
        else:
            moved = pending.moved_from is not None and pending.moved_from in folder.known
            event: Event = "moved" if moved else "created"
            last = folder.known.get(path)
            if not moved and last is not None and not last.deleted:
                event = "modified"
            await self._submit(folder, path, state, event, pending.moved_from if moved else None)
        self.settled += 1

    async def _submit(
        self, folder: _Folder, path: str, state: _State, event: Event, from_path: str | None
    ) -> None:
        last = folder.known.get(path)
        if last == state:
            return  # the same state was submitted before (same key)
        task_input: dict[str, Any] = {
            "path": path,
            "size": state.size,
            "mtime_ns": state.mtime_ns,
            "sha256": state.sha256,
            "event": event,
        }
        if from_path is not None:
            task_input["from_path"] = from_path
        key = content_key(path, state.size, state.mtime_ns, state.sha256)
        watch = folder.watch
        if watch.agent is not None and watch.prompt is not None:
            started = await _agent_input(folder, watch.agent, watch.prompt, task_input)
            if started is None:
                folder.known[path] = state  # this state does not fit the prompt: not again
                return
            task_input = started
        await self._enqueue(folder, task_input, key, path=path, event=event)
        folder.known[path] = state

    async def _submit_deletion(self, folder: _Folder, path: str) -> None:
        last = folder.known.get(path)
        if last is None or last.deleted:
            return  # never submitted, or its deletion was
        if folder.watch.agent is not None:  # an agent is started for files that are there
            folder.known[path] = dataclasses.replace(last, deleted=True)
            return
        task_input = {
            "path": path,
            "size": last.size,
            "mtime_ns": last.mtime_ns,
            "sha256": last.sha256,
            "event": "deleted",
        }
        key = deletion_key(path, last)
        await self._enqueue(folder, task_input, key, path=path, event="deleted")
        folder.known[path] = dataclasses.replace(last, deleted=True)

    async def _enqueue(
        self, folder: _Folder, task_input: dict[str, Any], key: str, *, path: str, event: str
    ) -> None:
        try:
            answer: models.Submitted = await submission.submit(
                self._pool,
                self._workflows,
                self._engine,
                tenant_id=folder.watch.tenant,
                workflow=folder.watch.workflow,
                task_input=task_input,
                idempotency_key=key,
                actor=ACTOR,
            )
        except errors.IdempotencyConflictError:
            # The same state was enqueued before under another event name: nothing new.
            log.debug("file state already enqueued: %s", path)
            return
        log.info(
            "file %s: task %s (%s)",
            event,
            answer.task_id,
            "new" if answer.created else "existing",
            extra={"event": "watch.enqueued", "path": path},
        )

    async def _catch_up(self) -> None:
        for folder in self._folders:
            await self._load_known(folder)
            seen: set[str] = set()
            batches = _scan(folder)
            while (batch := await asyncio.to_thread(next, batches, None)) is not None:
                changed = []
                for path, observed in batch:
                    seen.add(path)
                    last = folder.known.get(path)
                    if path in folder.pending:
                        continue  # a live event handles it
                    if last is None or last.deleted or _Stat(last.size, last.mtime_ns) != observed:
                        changed.append(path)
                if changed:  # hashed in one thread hop per batch, submitted one by one
                    hashed = await asyncio.to_thread(_hash_all, folder.root, changed)
                    for path, state in hashed:
                        if state is None:
                            log.debug("file vanished before it was hashed: %s", path)
                        elif path not in folder.pending:
                            await self._submit(folder, path, state, "catch-up", None)
            gone = [p for p, s in folder.known.items() if not s.deleted and p not in seen]
            for path in gone:
                if (
                    folder.matches(path)
                    and path not in folder.pending
                    and await asyncio.to_thread(_observe, folder.root, path) is None
                ):
                    await self._submit_deletion(folder, path)
        self.caught_up.set()
        log.info("file watch caught up", extra={"event": "watch.caught_up"})

    async def _load_known(self, folder: _Folder) -> None:
        """The last state of each path, from the watch's earlier tasks (one pass, paged)."""
        after = 0
        prefix = str(folder.root) + os.sep
        while True:
            page = await dbwatch.list_file_states(
                self._pool,
                tenant_id=folder.watch.tenant,
                workflow=folder.watch.workflow,
                path_prefix=prefix,
                after_task_id=after,
            )
            for row in page:
                folder.known[row.path] = _State(
                    row.size, row.mtime_ns, row.sha256, deleted=row.event == "deleted"
                )
            if not page:
                return
            after = page[-1].task_id


def _checked_root(watch: settings.Watch) -> Path:
    """The folder, resolved; ConfigError naming it when it is missing or unreadable."""
    try:
        root = watch.path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise errors.ConfigError(f"watched folder {str(watch.path)!r} does not exist") from exc
    if not root.is_dir():
        raise errors.ConfigError(f"watched folder {str(watch.path)!r} is not a folder")
    try:
        with os.scandir(root) as entries:
            next(entries, None)
    except OSError as exc:
        raise errors.ConfigError(f"watched folder {str(watch.path)!r} is not readable") from exc
    return root


async def _agent_input(
    folder: _Folder, agent: str, prompt: str, file: dict[str, Any]
) -> dict[str, str] | None:
    """An agent watch's task input: its prompt filled from the file (its text attached up to
    `attach_tokens`); None, logged, when the file does not fit the prompt."""
    limit = folder.watch.attach_tokens * CHARS_PER_TOKEN
    text, truncated = await asyncio.to_thread(_text_of, folder.root / file["path"], limit)
    values = {
        "path": file["path"],
        "name": Path(file["path"]).name,
        "size": file["size"],
        "type": mimetypes.guess_type(file["path"])[0] or "application/octet-stream",
        "event": file["event"],
        "text": text,
        "truncated": truncated,
    }
    try:
        return triggers.agent_input(agent, triggers.render(prompt, "file", values))
    except triggers.TriggerInputError as exc:
        log.warning(
            "file %s not given to agent %s: %s",
            file["path"],
            agent,
            exc.message,
            extra={"event": "watch.prompt_refused", "path": file["path"]},
        )
        return None


def _text_of(path: Path, limit: int) -> tuple[str, bool]:
    """The file's text up to `limit` characters and whether it was cut; ('', False) for a file
    that is not UTF-8 text (or is gone)."""
    most = limit * 4  # UTF-8 takes up to 4 bytes a character
    try:
        with path.open("rb") as file:
            head = file.read(most + 1)
    except OSError:
        return "", False
    more = len(head) > most
    head = head[:most]
    if b"\x00" in head:
        return "", False
    for cut in range(4):  # what was read may end inside a character
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return text[:limit], more or len(text) > limit
    return "", False
