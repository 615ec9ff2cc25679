"""The asyncpg pool, DSN resolution, and the one place where driver errors become ours."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import asyncpg.pool

from appliance import errors, settings
from appliance.db import tls

log = logging.getLogger(__name__)

LEASE_LOST = "AP409"
# What a person reads when a value breaks a CHECK constraint, by constraint name; any other
# constraint is named with its table and column (`_broken_rule`).
RULES = {
    "tenants_tenant_id_check": "a tenant id must match ^[a-z0-9][a-z0-9_-]{0,62}$ (lower-case "
    "letters, digits, '-' and '_', at most 63, starting with a letter or digit)",
    "agents_name_check": "an agent name must match ^[a-z0-9][a-z0-9_.-]{0,62}$ (lower-case "
    "letters, digits, '.', '-' and '_', at most 63, starting with a letter or digit)",
    "agents_max_tokens_check": "an agent's max_tokens must be at least 1",
    "agents_max_turns_check": "an agent's max_turns must be at least 1",
    "collections_collection_check": "a collection name must match "
    "^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$ (at most 128, starting with a letter or digit)",
    "prices_model_check": "a model name must be 1-200 characters without spaces",
    "prices_usd_per_mtok_check": "a price must not be negative",
    "budgets_usd_limit_check": "a budget must not be negative",
    "budgets_check": "only a task budget names a task",
    "tasks_max_attempts_check": "max attempts must be at least 1",
    "tasks_concurrency_limit_check": "a concurrency limit must be at least 1",
    "secrets_integration_check": "an integration name must match ^[a-z0-9][a-z0-9_.-]{0,62}$ "
    "(lower-case letters, digits, '.', '-' and '_', at most 63, starting with a letter or digit)",
    "secrets_name_check": "a secret name must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$ "
    "(letters, digits, '.', '-' and '_', at most 128, starting with a letter or digit)",
    "secrets_workflow_check": "a secret's workflow must be 1-200 characters (* for every one)",
    "secrets_rotate_every_check": "a rotation period must be longer than zero",
    "approval_votes_declared_as_check": "a declared name (--as) must be 1-200 characters",
    "approval_votes_approver_check": "an approver's identity must be 1-200 characters",
}
_NOUNS = {"policies": "policy", "webhook_deliveries": "webhook delivery", "approval_votes": "vote"}
_KEY = re.compile(r"^Key \((?P<columns>.*)\)=\((?P<values>.*)\) (is|already)")
_ARGUMENT = re.compile(r"^invalid input for query argument \$\d+.*\((?P<reason>[^()]*)\)$", re.S)
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


def dsn_of(config: settings.DatabaseSettings, socket_dir: Path | None = None) -> str:
    """The libpq URL to connect with: the configured DSN with its TLS settled (`tls.secured`),
    or a unix socket directory."""
    if config.url is not None:
        return tls.secured(config.url.get_secret_value(), config)
    folder = socket_dir or config.socket_dir
    if folder is None:
        raise errors.ConfigError("database: no url and no socket_dir, and no embedded cluster")
    return f"postgresql://{config.user}@/{config.name}?host={folder}"


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
) -> asyncpg.Pool:
    """Open a pool whose connections decode json/jsonb; raise DatabaseUnavailableError."""
    logging.getLogger("asyncpg.pool").addFilter(_QUIET)  # once: the same filter is not added twice
    with translated():
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
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
    except (
        asyncpg.exceptions.IntegrityConstraintViolationError,
        asyncpg.exceptions.DataError,
    ) as exc:
        raise _refused(exc) from exc
    except asyncpg.exceptions.PostgresError as exc:
        raise _server_error(exc) from exc


def _refused(exc: asyncpg.exceptions.PostgresError) -> errors.ApplianceError:
    """Ours for a value the database refused: a broken rule or an unfit value is bad input, an
    unknown tenant is one, a duplicate is a no (`already exists`)."""
    if isinstance(exc, asyncpg.exceptions.ForeignKeyViolationError):
        return _missing_reference(exc)
    if isinstance(exc, asyncpg.exceptions.UniqueViolationError):
        if exc.constraint_name == "audit_entries_pkey":
            return errors.ChainContentionError(str(exc))
        return errors.StateError(f"{_noun(exc.table_name)} {_key(exc.detail)}already exists")
    if isinstance(exc, asyncpg.exceptions.CheckViolationError):
        return errors.InputError(_broken_rule(exc))
    if isinstance(exc, asyncpg.exceptions.NotNullViolationError):
        return errors.InputError(
            f"{_noun(exc.table_name)} needs a {exc.column_name or 'value'}; none was given"
        )
    if isinstance(exc, asyncpg.exceptions.DataError):
        return errors.InputError(f"a value does not fit: {_data_reason(exc)}")
    return _server_error(exc)


def _noun(table: str | None) -> str:
    """`secrets` -> `secret`: the thing a row of the table is, for messages."""
    if not table:
        return "the row"
    return _NOUNS.get(table, table.removesuffix("s").replace("_", " "))


def _key(detail: str | None) -> str:
    """`Key (a, b)=(x, y) already exists.` -> `(a, b)=(x, y) `; empty when Postgres kept the
    values back (row security)."""
    found = _KEY.match(detail or "")
    return f"({found['columns']})=({found['values']}) " if found else ""


def _missing_reference(exc: asyncpg.exceptions.ForeignKeyViolationError) -> errors.ApplianceError:
    """An unknown tenant (or task, agent ...) named by a write; or a row still referenced."""
    found = _KEY.match(exc.detail or "")
    if found and "still referenced" in (exc.detail or ""):
        return errors.StateError(f"{_noun(exc.table_name)} {_key(exc.detail)}is still in use")
    columns = found["columns"] if found else ""
    value = f" {found['values']!r}" if found else ""
    if columns == "tenant_id" or (not found and "tenant_id_fkey" in (exc.constraint_name or "")):
        name = found["values"] if found else "ID"
        return errors.UnknownTenantError(
            f"unknown tenant{value}; create it with `appliance tenants add {name}`"
        )
    what = columns.removesuffix("_id").replace("_", " ") if found else "row it refers to"
    return errors.InputError(f"unknown {what}{value}")


def _broken_rule(exc: asyncpg.exceptions.CheckViolationError) -> str:
    """The rule a value broke, in words (never the failing row, which may hold anything)."""
    name = exc.constraint_name or ""
    if name in RULES:
        return RULES[name]
    if not name:
        return f"a value was refused: {exc.args[0]}"
    column = name.removeprefix(f"{exc.table_name}_").removesuffix("_check").replace("_", " ")
    return f"a {column} of a {_noun(exc.table_name)} breaks its rule {name}"


def _data_reason(exc: asyncpg.exceptions.DataError) -> str:
    """Why Postgres (or the driver, encoding an argument) refused a value, without the value."""
    message = str(exc.args[0]) if exc.args else type(exc).__name__
    found = _ARGUMENT.match(message)
    return found["reason"] if found else message.splitlines()[0]


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
