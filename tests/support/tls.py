"""A Postgres that speaks TLS on 127.0.0.1, with a CA and a server certificate made here.

`running()` makes two certificate authorities (the server's and an impostor that signed
nothing the server shows), a server certificate for the name `localhost` only (so `127.0.0.1`
is a host it does not name), initdb's a throwaway cluster (as `nobody` when root: Postgres
refuses root) and starts it listening on 127.0.0.1 with `ssl = on`. Its pg_hba accepts
connections with TLS and without: a client that fell back to the clear would get in, so a
refusal is the client's own. The database `appliance` exists, empty; the admin DSN reaches the
server over its unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import pwd
import shutil
import tempfile
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.db import embedded
from tests.support import daemon

DATABASE = "appliance"
HOST = "localhost"  # the one name the server's certificate carries
OTHER_HOST = "127.0.0.1"  # the same server, by an address the certificate does not name
RUN_AS = "nobody" if os.geteuid() == 0 else None
COMMAND_SECONDS = 90.0
PG_HBA = """\
local   all all                trust
hostssl all all 127.0.0.1/32   trust
host    all all 127.0.0.1/32   trust
"""


@dataclasses.dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def authority(common_name: str) -> Authority:
    """A self-signed CA, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, certificate)


def server_certificate(
    ca: Authority, host: str
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server certificate for the DNS name `host` alone, signed by `ca`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return key, certificate


@dataclasses.dataclass(frozen=True)
class TlsServer:
    """The running server, and the CA files a client may be given."""

    folder: Path
    port: int
    ca: Path  # signed the server's certificate
    impostor: Path  # another CA, which signed nothing the server shows
    socket_dir: Path

    def url(self, host: str = HOST, **parameters: str) -> str:
        """A client's URL of the `appliance` database, with libpq parameters such as sslmode."""
        query = urllib.parse.urlencode(parameters, safe="/", quote_via=urllib.parse.quote)
        return f"postgresql://postgres@{host}:{self.port}/{DATABASE}" + (
            f"?{query}" if query else ""
        )

    def admin_dsn(self, database: str = DATABASE) -> str:
        """The database over the server's unix socket (no TCP, no TLS): for the test's checks."""
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"


async def _run(*args: str) -> None:
    """Run a server tool as RUN_AS; AssertionError with its output when it fails."""
    prefix = ["runuser", "-u", RUN_AS, "--"] if RUN_AS else []
    process = await asyncio.create_subprocess_exec(
        *prefix,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(COMMAND_SECONDS):
        output, _ = await process.communicate()
    if process.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {output.decode(errors='replace')}")


def _give(path: Path) -> None:
    """Make `path` the server user's."""
    if RUN_AS:
        account = pwd.getpwnam(RUN_AS)
        os.chown(path, account.pw_uid, account.pw_gid)


@contextlib.asynccontextmanager
async def running() -> AsyncIterator[TlsServer]:
    """The TLS server for the block; stopped and removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="aptls"))  # short: unix socket paths are limited
    folder.chmod(0o755)
    data, sockets, log = folder / "data", folder / "run", folder / "server.log"
    binaries = embedded.find_binaries()
    try:
        sockets.mkdir(mode=0o755)
        _give(sockets)
        _give(folder)
        await _run(
            str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--no-locale"
        )
        ca, impostor = authority("appliance test CA"), authority("impostor CA")
        key, certificate = server_certificate(ca, HOST)
        (data / "server.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file = data / "server.key"
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_file.chmod(0o600)
        (data / "pg_hba.conf").write_text(PG_HBA, encoding="utf-8")
        for path in (data / "server.crt", key_file, data / "pg_hba.conf"):
            _give(path)
        (folder / "ca.pem").write_bytes(ca.pem())
        (folder / "impostor.pem").write_bytes(impostor.pem())
        port = daemon.free_port(OTHER_HOST)
        options = (
            f"-c listen_addresses={OTHER_HOST} -c port={port} -c ssl=on "
            f"-c unix_socket_directories={sockets}"
        )
        pg_ctl = str(binaries / "pg_ctl")
        await _run(
            pg_ctl, "-D", str(data), "-w", "-t", "60", "-l", str(log), "-o", options, "start"
        )
        server = TlsServer(folder, port, folder / "ca.pem", folder / "impostor.pem", sockets)
        try:
            admin = await asyncpg.connect(server.admin_dsn("postgres"))
            try:
                await admin.execute(f'CREATE DATABASE "{DATABASE}"')
            finally:
                await admin.close()
            yield server
        finally:
            await _run(pg_ctl, "-D", str(data), "-m", "immediate", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
