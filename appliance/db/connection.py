"""Where the database is: a DSN, a socket directory, or the embedded cluster of the state dir."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator

from appliance import errors, settings
from appliance.db import embedded, pool, tls


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
    config: settings.Settings, *, create_cluster: bool = False, pool_size: int | None = None
) -> AsyncIterator[Database]:
    """A pool on the configured database.

    The embedded cluster is started if it is not running, whether or not a daemon runs, and
    stopped again afterwards unless another process (a daemon, another command) still uses it
    (`embedded.EmbeddedPostgres.use`). Only with `create_cluster` (init, migrate, the daemon)
    is a cluster initialised where there is none.

    A server the client refuses over TLS (`tls.refusal`) is a DatabaseTlsError (exit 78):
    waiting does not mend a certificate; one that does not answer is unavailable (69).
    """
    async with contextlib.AsyncExitStack() as stack:
        cluster = cluster_of(config) if config.embedded else None
        if cluster is not None:
            await stack.enter_async_context(cluster.use(create=create_cluster))
            dsn = cluster.dsn()
        else:
            dsn = pool.dsn_of(config.database)
        try:
            opened = await pool.create_pool(
                dsn,
                min_size=1 if pool_size else config.database.pool_min,
                max_size=pool_size or config.database.pool_max,
                timeout=config.database.connect_timeout,
            )
        except errors.DatabaseUnavailableError as exc:
            refused = tls.refusal(exc.__cause__, tls.effective(dsn, config.database))
            if refused is not None:
                raise refused from exc.__cause__
            raise errors.DatabaseUnavailableError(
                f"Postgres at {pool.describe_dsn(dsn)} cannot be reached: {exc.__cause__}"
            ) from exc
        stack.push_async_callback(opened.close)
        yield Database(dsn, opened, cluster)
