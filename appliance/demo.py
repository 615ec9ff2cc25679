"""The demo workflow: read a folder's files, hash them, summarise. No network needed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pydantic

from appliance import errors
from appliance.engine import context, registry

MAX_FILES = 10_000
WORKFLOW = "demo.folder_digest"


def list_files(folder: str) -> list[dict[str, Any]]:
    """Regular files below the folder (symlinks not followed), sorted, at most MAX_FILES."""
    root = Path(folder)
    if not root.is_dir():
        raise errors.InputError(f"{folder}: not a directory")
    found: list[dict[str, Any]] = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found.append({"path": str(path.relative_to(root)), "size": path.stat().st_size})
            if len(found) >= MAX_FILES:
                break
    return found


def hash_files(folder: str, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SHA-256 of each file."""
    hashed = []
    for entry in files:
        digest = hashlib.sha256()
        with open(os.path.join(folder, entry["path"]), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 16), b""):
                digest.update(block)
        hashed.append({"path": entry["path"], "sha256": digest.hexdigest()})
    return hashed


def summarize(files: list[dict[str, Any]], hashes: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, total size, the largest files and one digest over every file's hash."""
    combined = hashlib.sha256()
    for entry in hashes:
        combined.update(f"{entry['path']}\0{entry['sha256']}\n".encode())
    largest = sorted(files, key=lambda f: (-f["size"], f["path"]))[:3]
    return {
        "files": len(files),
        "bytes": sum(f["size"] for f in files),
        "largest": [f"{f['path']} ({f['size']} B)" for f in largest],
        "digest": combined.hexdigest(),
    }


class DigestInput(pydantic.BaseModel):
    """The demo's input: the folder to digest."""

    model_config = pydantic.ConfigDict(extra="forbid")

    folder: str = pydantic.Field(min_length=1)


@registry.workflow(WORKFLOW, input_model=DigestInput)
async def folder_digest(ctx: context.TaskContext, task_input: Any) -> Any:
    """list → hash → summarise, each a checkpointed step."""
    folder = str(task_input["folder"])
    files = await ctx.step("list_files", list_files, folder)
    hashes = await ctx.step("hash_files", hash_files, folder, files)
    return await ctx.step("summarize", summarize, files, hashes)
