"""The asyncpg pool, DSN resolution, and the one place where driver errors become ours."""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import asyncpg
import asyncpg.pool

from appliance import errors, settings

log = logging.getLogger(__name__)

LEASE_LOST = "AP409"
_UNAVAILABLE = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    # A connection caught mid-operation by the server's shutdown ("cannot switch to state 11;
    # another operation is in progress"): not a bug of ours, and it escaped every handler, so
    # the daemon's db watch died and never reported the outage.
    asyncpg.exceptions.InternalClientError,
    TimeoutError,
)

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
Pool = asyncpg.Pool
Record = asyncpg.Record
Tls = ssl.SSLContext | Literal["disable", "prefer", "require", "verify-ca", "verify-full"] | None


def dsn_of(config: settings.DatabaseSettings, socket_dir: Path | None = None) -> str:
    """The libpq URL to connect with: the configured DSN, or a unix socket directory."""
    if config.url is not None:
        return config.url.get_secret_value()
    folder = socket_dir or config.socket_dir
    if folder is None:
        raise errors.ConfigError("database: no url and no socket_dir, and no embedded cluster")
    return f"postgresql://{config.user}@/{config.name}?host={folder}"


def ssl_context(config: settings.DatabaseSettings) -> Tls:
    """TLS for a remote server: verify-full checks the chain and the host name."""
    if config.sslmode is None:
        return None
    if config.sslmode in ("verify-ca", "verify-full"):
        context = ssl.create_default_context(
            cafile=str(config.sslrootcert) if config.sslrootcert else None
        )
        context.check_hostname = config.sslmode == "verify-full"
        return context
    return config.sslmode


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(_: asyncpg.Connection) -> None:
    """Pool connections carry no session state (LISTEN and session advisory locks live on
    dedicated connections, transactions end before release), so the reset round trip that
    asyncpg makes on every release is skipped: it doubled the round trips of every step."""


class _OutageNoise(logging.Filter):
    """asyncpg's pool logs a WARNING with a traceback at every failed try to reconnect its
    connection floor: every second at first, for as long as Postgres is away. An outage is
    logged once, by whoever watches the database (the daemon's db watch), so those records
    become DEBUG lines without the traceback, kept only where DEBUG is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not str(record.msg).startswith(
            "Failed to restore the pool connection floor"
        ):
            return True
        cause = record.exc_info[1] if record.exc_info else None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args = "pool floor not restored: %s: %s", (type(cause).__name__, cause)
        record.exc_info, record.exc_text = None, None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_QUIET = _OutageNoise()


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 12,
    timeout: float = 5.0,
    tls: Tls = None,
) -> asyncpg.Pool:
    """Open a pool whose connections decode json/jsonb; raise DatabaseUnavailableError."""
    logging.getLogger("asyncpg.pool").addFilter(_QUIET)  # once: the same filter is not added twice
    with translated():
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            ssl=tls,
            init=_init_connection,
            reset=_keep_session,
            server_settings={"application_name": "appliance"},
        )
    return pool


async def connect(dsn: str, *, timeout: float = 5.0) -> asyncpg.Connection:
    """One connection outside the pool (LISTEN, advisory locks that outlive a transaction)."""
    with translated():
        conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=timeout)
        await _init_connection(conn)
    return conn


def describe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages."""
    with contextlib.suppress(ValueError, IndexError):
        if "@" in dsn and "://" in dsn:
            scheme, rest = dsn.split("://", 1)
            creds, host = rest.rsplit("@", 1)
            return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return dsn


def is_unavailable(exc: BaseException) -> bool:
    """True when the error means Postgres cannot be reached (as opposed to a bad query)."""
    return isinstance(exc, (*_UNAVAILABLE, errors.DatabaseUnavailableError))


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Turn asyncpg errors into the appliance's: the only place that knows the driver's."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise errors.DatabaseUnavailableError(
            f"Postgres cannot be reached: {type(exc).__name__}: {exc}"
        ) from exc
    except asyncpg.exceptions.InvalidCatalogNameError as exc:
        raise errors.ConfigError(f"database does not exist: {exc}") from exc
    except asyncpg.exceptions.InvalidAuthorizationSpecificationError as exc:
        raise errors.ConfigError(f"database refused the login: {exc}") from exc
    except asyncpg.exceptions.InvalidPasswordError as exc:
        raise errors.ConfigError(f"database refused the password: {exc}") from exc
    except asyncpg.exceptions.UndefinedTableError as exc:
        raise errors.SchemaError(f"the schema is missing ({exc}); run `appliance migrate`") from exc
    except asyncpg.exceptions.UndefinedFunctionError as exc:
        raise errors.SchemaError(
            f"the schema is out of date ({exc}); run `appliance migrate`"
        ) from exc
    except asyncpg.exceptions.ForeignKeyViolationError as exc:
        if exc.constraint_name == "tasks_tenant_id_fkey":
            raise errors.UnknownTenantError(
                f"unknown tenant ({exc.detail}); create it with `appliance tenants add`"
            ) from exc
        raise errors.InputError(f"{exc} ({exc.detail})") from exc
    except asyncpg.exceptions.UniqueViolationError as exc:
        if exc.constraint_name == "audit_entries_pkey":
            raise errors.ChainContentionError(str(exc)) from exc
        raise errors.StateError(f"{exc} ({exc.detail})") from exc
    except asyncpg.exceptions.PostgresError as exc:
        raise _server_error(exc) from exc


def _server_error(exc: asyncpg.exceptions.PostgresError) -> errors.ApplianceError:
    """Ours for a server error no case above names: a lost lease, row security, or a bug."""
    if exc.sqlstate == LEASE_LOST:
        return errors.LeaseLostError(str(exc))
    if isinstance(exc, asyncpg.exceptions.InsufficientPrivilegeError) and (
        "row-level security" in str(exc)
    ):
        return errors.TenantIsolationError(
            f"{exc}: a tenant's transaction cannot write rows of another tenant"
        )
    return errors.ApplianceError(f"database error: {exc}")


def record_dict(record: Any) -> dict[str, Any]:
    """A row as a plain dict."""
    return dict(record.items())
