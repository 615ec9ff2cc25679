"""TLS with Postgres: what a connection demands, written into the DSN every connection uses.

The mode and the CA file come from `database.sslmode` and `database.sslrootcert`, else from the
url's own `sslmode` and `sslrootcert` parameters, else from libpq's `PGSSLMODE` and
`PGSSLROOTCERT`; set in the settings and in the url, they must agree. With none of them, a
server on another host gets `verify-full`: its certificate must chain to the CA file and name
the host the url names, so a connection to another machine is never made in the clear by
default, nor falls back to it when TLS fails. A unix socket and this machine's own addresses
keep the driver's default (`prefer` over TCP).

`secured` folds the outcome into the url's parameters, so the pool, the dedicated connections
(the node name's hold, LISTEN, the relay) and pg_dump all connect the same way.

`refusal` says in words why the client refused a server (exit 78): its certificate is not
signed by the CA, it does not name the host, the server offers no TLS, the CA file is missing.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import ssl
import typing
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args

import asyncpg

from appliance import errors, settings

Mode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
VERIFIED: tuple[Mode, ...] = ("verify-ca", "verify-full")
REMOTE_DEFAULT: Mode = "verify-full"
_HOSTNAME_MISMATCH = frozenset({62, 64})  # X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH


class DatabaseTlsError(errors.ConfigError):
    """TLS with Postgres was refused: the certificate, its host name or the server's TLS does
    not match the settings."""


@dataclasses.dataclass(frozen=True)
class Tls:
    """What TLS connections to the configured server demand."""

    mode: Mode | None  # None: the driver's default (a unix socket, or this machine)
    rootcert: str | None
    hosts: tuple[str, ...]  # the TCP hosts the url names
    address: str  # host[:port] for messages

    @property
    def remote(self) -> bool:
        """Whether a host is another machine (not a unix socket, not loopback)."""
        return any(not is_local(host) for host in self.hosts)

    def describe(self) -> str:
        """`sslmode=verify-full, CA /etc/appliance/rds.pem` (for messages)."""
        if self.mode is None:
            return "no sslmode (the driver's default)"
        return f"sslmode={self.mode}" + (f", CA {self.rootcert}" if self.rootcert else "")


def is_local(host: str) -> bool:
    """This machine: `localhost` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False


def effective(
    dsn: str, config: settings.DatabaseSettings, environ: Mapping[str, str] | None = None
) -> Tls:
    """The TLS the url and the settings demand (ConfigError when they disagree)."""
    env = os.environ if environ is None else environ
    parts = urllib.parse.urlsplit(dsn)
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    mode = _one("sslmode", config.sslmode, query.get("sslmode"), env.get("PGSSLMODE"))
    rootcert = _one(
        "sslrootcert",
        None if config.sslrootcert is None else str(config.sslrootcert),
        query.get("sslrootcert"),
        env.get("PGSSLROOTCERT"),
    )
    hosts, address = _hosts(parts, query, env)
    tls = Tls(_mode(mode), rootcert, hosts, address)
    if tls.mode is None and tls.remote:
        return dataclasses.replace(tls, mode=REMOTE_DEFAULT)
    return tls


def secured(
    dsn: str, config: settings.DatabaseSettings, environ: Mapping[str, str] | None = None
) -> str:
    """The url with the effective sslmode and CA file as its parameters (unchanged when the
    driver's default stands); ConfigError when the CA file named is not there."""
    tls = effective(dsn, config, environ)
    if tls.mode is None:
        return dsn
    if tls.rootcert is not None and not Path(tls.rootcert).expanduser().is_file():
        raise DatabaseTlsError(
            f"the CA file (sslrootcert) {tls.rootcert} is not a file: it must be the CA that "
            "signs the server's certificate, in PEM"
        )
    parts = urllib.parse.urlsplit(dsn)
    query = [
        (key, value)
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if key not in ("sslmode", "sslrootcert")
    ]
    query.append(("sslmode", tls.mode))
    if tls.rootcert is not None:
        query.append(("sslrootcert", tls.rootcert))
    encoded = urllib.parse.urlencode(query, safe="/", quote_via=urllib.parse.quote)
    return urllib.parse.urlunsplit(parts._replace(query=encoded))


def refusal(exc: BaseException | None, tls: Tls) -> DatabaseTlsError | None:
    """Why the client refused the server, in words, when it did (None: another failure)."""
    where = f"Postgres at {tls.address}"
    ca = f"the CA in {tls.rootcert or '~/.postgresql/root.crt'}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _HOSTNAME_MISMATCH:
            return DatabaseTlsError(
                f"{where} was refused ({tls.describe()}): its certificate does not name the "
                f"host it was reached by ({exc.verify_message}); connect by a name the "
                "certificate carries"
            )
        return DatabaseTlsError(
            f"{where} was refused ({tls.describe()}): its certificate is not signed by {ca} "
            f"({exc.verify_message}); set database.sslrootcert to the CA that signs it"
        )
    if isinstance(exc, asyncpg.exceptions.ClientConfigurationError):
        return DatabaseTlsError(
            f"{where}: {str(exc).splitlines()[0]} ({tls.describe()}); set database.sslrootcert "
            "to the CA that signs the server's certificate"
        )
    if isinstance(exc, ssl.SSLError) and exc.library in ("PEM", "X509"):
        return DatabaseTlsError(
            f"{where}: the CA file {tls.rootcert} cannot be used ({exc.reason}); it must hold "
            "the CA's certificate in PEM"
        )
    if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc):
        return DatabaseTlsError(
            f"{where} offers no TLS, and {tls.describe()} demands it: turn ssl on at the "
            "server (ssl = on, with its certificate and key)"
        )
    return None


def _one(
    name: str, configured: str | None, in_url: str | None, from_environment: str | None
) -> str | None:
    """The value from the settings, else the url, else the environment; ConfigError when the
    settings and the url both set it, differently."""
    if configured is not None and in_url is not None and configured != in_url:
        raise DatabaseTlsError(
            f"database.{name} ({configured}) and the url's {name} ({in_url}) differ; keep one"
        )
    for value in (configured, in_url, from_environment):
        if value:
            return value
    return None


def _mode(value: str | None) -> Mode | None:
    if value is None:
        return None
    if value in get_args(Mode):
        return typing.cast(Mode, value)
    raise DatabaseTlsError(
        f"sslmode {value!r} is not one of {', '.join(get_args(Mode))} (verify-full for a "
        "server on another host)"
    )


def _hosts(
    parts: urllib.parse.SplitResult, query: Mapping[str, str], environ: Mapping[str, str]
) -> tuple[tuple[str, ...], str]:
    """The TCP hosts of the url (its netloc, else its `host` parameter, else PGHOST), and
    host[:port] for messages; a host that is a directory is a unix socket."""
    netloc = parts.netloc.rpartition("@")[2]
    named = [item for item in netloc.split(",") if item]
    hosts = [_host_of(item) for item in named]
    if not hosts:
        listed = query.get("host") or environ.get("PGHOST") or ""
        hosts = [urllib.parse.unquote(item) for item in listed.split(",") if item]
        named = hosts
    tcp = tuple(host for host in hosts if host and not host.startswith("/"))
    return tcp, ",".join(named) or "the default socket"


def _host_of(item: str) -> str:
    """`db.example:5432` -> `db.example`; `[::1]:5432` -> `::1`."""
    if item.startswith("["):
        return item[1 : item.find("]")]
    return urllib.parse.unquote(item.partition(":")[0])
