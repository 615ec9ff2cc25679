"""What the packaging tests need, made in the background while the rest of the suite runs.

This tree's .deb, the root filesystem of the boot box (minutes when its cache is cold), the same
.deb built a second time (the reproducibility test compares the two) and the later release the
upgrade test installs over it: one after another in one worker thread, started as soon as the
session knows it will run the packaging tests (tests/conftest.py puts those last). A fixture
that needs one of them waits for it; without `start()` it is made there and then, as before.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.support import box, package


class _Background:
    """The worker thread, its folder and its futures (one per session)."""

    def __init__(self) -> None:
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.work: Path | None = None
        self.made: dict[str, concurrent.futures.Future[Path]] = {}


_state = _Background()


def _recipes(work: Path) -> dict[str, Callable[[], Path]]:
    return {
        "deb": lambda: package.build(work / "deb"),
        "rootfs": box.rootfs,
        "deb-again": lambda: package.build(work / "deb-again"),
        "newer": lambda: package.build_newer(work / "newer"),
    }


def start() -> None:
    """Begin making everything, in order, in one background thread."""
    if _state.pool is not None:
        return
    _state.work = Path(tempfile.mkdtemp(prefix="appliance-packaging-"))
    _state.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prepare")
    for name, recipe in _recipes(_state.work).items():
        _state.made[name] = _state.pool.submit(recipe)


def get(name: str, out: Path) -> Path:
    """The thing `name` (made in the background if started, else now, into `out`)."""
    if name in _state.made:
        return _state.made[name].result()
    return _recipes(out)[name]()


def stop() -> None:
    """Wait for the worker (a build cannot be interrupted) and remove what it made."""
    if _state.pool is not None:
        for future in _state.made.values():
            future.cancel()
        _state.pool.shutdown(wait=True)
    if _state.work is not None:
        shutil.rmtree(_state.work, ignore_errors=True)
    _state.pool, _state.work = None, None
    _state.made.clear()
