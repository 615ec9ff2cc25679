"""Where the database is: a DSN, a socket directory, or the embedded cluster of the state dir."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator

from appliance import errors, settings
from appliance.db import embedded, pool


@dataclasses.dataclass
class Database:
    dsn: str
    pool: pool.Pool
    cluster: embedded.EmbeddedPostgres | None


def cluster_of(config: settings.Settings) -> embedded.EmbeddedPostgres:
    """The embedded cluster of the state directory (whether or not it runs)."""
    return embedded.EmbeddedPostgres(
        config.state_dir,
        database=config.database.name,
        role=config.database.user,
        run_as=config.database.embedded_user,
    )


@contextlib.asynccontextmanager
async def open_database(
    config: settings.Settings, *, start_cluster: bool, pool_size: int | None = None
) -> AsyncIterator[Database]:
    """A pool on the configured database; with `start_cluster`, the embedded cluster is started
    if needed (and stopped again afterwards if this call started it)."""
    cluster = cluster_of(config) if config.embedded else None
    started_here = False
    if cluster is not None:
        if start_cluster:
            started_here = not await cluster.is_running()
            await cluster.start()
        elif not await cluster.is_running():
            raise errors.DatabaseUnavailableError(
                f"the embedded Postgres in {config.state_dir} is not running; "
                "start the daemon (`appliance run`) or run `appliance init`"
            )
        dsn = cluster.dsn()
    else:
        dsn = pool.dsn_of(config.database)
    try:
        try:
            opened = await pool.create_pool(
                dsn,
                min_size=1 if pool_size else config.database.pool_min,
                max_size=pool_size or config.database.pool_max,
                timeout=config.database.connect_timeout,
                tls=pool.ssl_context(config.database),
            )
        except errors.DatabaseUnavailableError as exc:
            raise errors.DatabaseUnavailableError(
                f"Postgres at {pool.describe_dsn(dsn)} cannot be reached: {exc.__cause__}"
            ) from exc
        try:
            yield Database(dsn, opened, cluster)
        finally:
            await opened.close()
    finally:
        if cluster is not None and started_here:
            await cluster.stop()
