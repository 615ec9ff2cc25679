"""Ways a vault master key goes missing or bad where the appliance reads it (a key file, or a
systemd credential, which is a file in $CREDENTIALS_DIRECTORY): each takes the path and the
good key, and leaves the path broken in its own way."""

from __future__ import annotations

import base64
import os
import pwd
import shutil
from collections.abc import Callable
from pathlib import Path

Breaker = Callable[[Path, bytes], None]


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def missing(path: Path, key: bytes) -> None:
    path.unlink()


def empty(path: Path, key: bytes) -> None:
    _write(path, b"")


def one_byte_short(path: Path, key: bytes) -> None:
    _write(path, key[:-1])


def one_byte_long(path: Path, key: bytes) -> None:
    _write(path, key + b"\0")


def line_ending_added(path: Path, key: bytes) -> None:
    _write(path, key + b"\n")


def written_as_hex(path: Path, key: bytes) -> None:
    _write(path, key.hex().encode() + b"\n")


def written_as_base64(path: Path, key: bytes) -> None:
    _write(path, base64.b64encode(key) + b"\n")


def readable_by_others(path: Path, key: bytes) -> None:
    path.chmod(0o644)


def readable_by_group(path: Path, key: bytes) -> None:
    path.chmod(0o640)


def owned_by_another_user(path: Path, key: bytes) -> None:
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)


def a_directory(path: Path, key: bytes) -> None:
    path.unlink()
    path.mkdir(mode=0o700)


def a_dangling_symlink(path: Path, key: bytes) -> None:
    path.unlink()
    path.symlink_to(path.with_name("nowhere"))


SHAPES: dict[str, Breaker] = {
    "missing": missing,
    "empty": empty,
    "one byte short": one_byte_short,
    "one byte long": one_byte_long,
    "line ending added": line_ending_added,
    "written as hex": written_as_hex,
    "written as base64": written_as_base64,
    "readable by others": readable_by_others,
    "readable by its group": readable_by_group,
    "a directory": a_directory,
    "a dangling symlink": a_dangling_symlink,
}
if os.geteuid() == 0:  # only root can give a file away
    SHAPES["owned by another user"] = owned_by_another_user
# The key is there but others could read it: the fix is chmod or chown, not a lost key.
EXPOSED = frozenset({"readable by others", "readable by its group", "owned by another user"})
# The key is there in another form: the fix rewrites it as the raw bytes.
RECOVERABLE = frozenset(
    {"written as hex", "written as base64", "line ending added", "one byte long"}
)
