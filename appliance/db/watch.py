"""Query wrappers of `sql/watch.sql`: the file states that file watches enqueued as tasks.

There is no table of its own: a watch's memory is the input of the tasks it submitted, so it
lives in Postgres and survives restarts. The query pages through `tasks` by primary key, so a
catch-up reads each task once however many pages it takes, and each round trip is bounded.
"""

from __future__ import annotations

import dataclasses

from appliance.db import pool, sql

_Q = sql.load("watch")


@dataclasses.dataclass(frozen=True, slots=True)
class FileState:
    """What a file-watch task recorded of one file (event `deleted`: its last state before)."""

    task_id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str
    event: str


async def list_file_states(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    workflow: str,
    path_prefix: str,
    after_task_id: int = 0,
    limit: int = 5000,
) -> list[FileState]:
    """Up to `limit` file states under `path_prefix`, in task order, after `after_task_id`."""
    with pool.translated():
        rows = await conn.fetch(
            _Q["list_file_states"], tenant_id, workflow, path_prefix, after_task_id, limit
        )
    return [FileState(**pool.record_dict(row)) for row in rows]
