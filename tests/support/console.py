"""The console served in-process on real sockets, with people on the tailnet played by the
`tailscale` stand-in.

Each person has a tailnet address of their own; here the addresses are loopback ones
(127.0.0.2, 127.0.0.3, ...), which a client binds as its source address, so the console's
`tailscale whois <addr:port>` resolves each connection to its person, exactly as on the
tailnet. The stand-in's peers file gives each a node, a login and app capabilities.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from appliance import health, operations, settings
from appliance.console import app as console_web
from appliance.console import identity
from appliance.db import pool as dbpool
from appliance.mesh import tailscale

STAND_IN = Path(__file__).resolve().parent / "bin" / "tailscale"
CAPABILITY = "example.com/cap/appliance"


@dataclasses.dataclass(frozen=True)
class Someone:
    """A person (or a tagged device) on the tailnet, at their own address."""

    address: str
    login: str
    name: str
    host: str
    tags: tuple[str, ...] = ()
    capabilities: Mapping[str, list[Any]] = dataclasses.field(default_factory=dict)

    def peer(self, number: int) -> dict[str, Any]:
        """The stand-in's peer entry."""
        return {
            "ID": 9000 + number,
            "StableID": f"nTest{number}CNTRL",
            "HostName": self.host,
            "IPs": [self.address, f"fd7a:115c:a1e0::9:{number}"],
            "Tags": list(self.tags),
            "OS": "linux",
            "User": {"ID": 7000 + number, "LoginName": self.login, "DisplayName": self.name},
            "CapMap": dict(self.capabilities),
        }


ALICE = Someone("127.0.0.2", "alice@example.com", "Alice", "alice-laptop")
BOB = Someone("127.0.0.3", "bob@example.com", "Bob", "bob-phone")
CAROL = Someone("127.0.0.4", "carol@example.com", "Carol", "carol-desk")
DAVE = Someone("127.0.0.5", "dave@example.com", "Dave", "dave-mac")
PROMETHEUS = Someone("127.0.0.6", "tagged-devices", "Tagged Devices", "prom", tags=("tag:prom",))
ERIN = Someone(
    "127.0.0.7",
    "erin@example.com",
    "Erin",
    "erin-laptop",
    capabilities={CAPABILITY: [{"tenants": ["globex"], "role": "approver"}]},
)
FRANK = Someone("127.0.0.8", "frank@example.com", "Frank", "frank-laptop")
EVERYONE = (ALICE, BOB, CAROL, DAVE, PROMETHEUS, ERIN, FRANK)

GRANTS = (
    settings.ConsoleGrant(login=ALICE.login, tenants=("acme",), role="operator"),
    settings.ConsoleGrant(login=BOB.login, tenants=("acme",), role="approver"),
    settings.ConsoleGrant(login=CAROL.login, tenants=("acme",), role="viewer"),
    settings.ConsoleGrant(login=ERIN.login, tenants=("globex",), role="viewer"),
    settings.ConsoleGrant(login=FRANK.login, tenants=("acme", "globex"), role="approver"),
)


def write_peers(folder: Path) -> Path:
    """The stand-in's peers file of EVERYONE."""
    path = folder / "tailnet-peers.json"
    path.write_text(json.dumps([p.peer(n) for n, p in enumerate(EVERYONE, start=1)]))
    return path


@dataclasses.dataclass
class Console:
    """A served console: its TCP port (people resolved by whois) and its serve socket."""

    port: int
    serve_socket: Path

    @contextlib.asynccontextmanager
    async def client(self, who: Someone) -> AsyncIterator[Client]:
        """A session whose connections come from `who`'s address."""
        connector = aiohttp.TCPConnector(local_addr=(who.address, 0), force_close=True)
        async with aiohttp.ClientSession(
            base_url=f"http://127.0.0.1:{self.port}", connector=connector
        ) as session:
            yield Client(session)

    @contextlib.asynccontextmanager
    async def through_serve(self, headers: Mapping[str, str]) -> AsyncIterator[Client]:
        """A session on the serve socket, every request carrying `headers` (as serve sets)."""
        connector = aiohttp.UnixConnector(path=str(self.serve_socket))
        async with aiohttp.ClientSession(
            base_url="http://console.tail1fb5f0.ts.net", connector=connector, headers=headers
        ) as session:
            yield Client(session)


class Client:
    """JSON calls with the token that state-changing requests need, fetched on first use."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self._token: str | None = None

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.session.get(path, **kwargs) as answer:
            return answer.status, await _body(answer)

    async def token(self) -> str:
        if self._token is None:
            status, me = await self.get("/api/v1/me")
            assert status == 200, me
            self._token = str(me["csrf_token"])
        return self._token

    async def post(
        self, path: str, body: Any = None, *, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any]:
        sent = {"X-CSRF-Token": await self.token(), **(headers or {})}
        async with self.session.post(path, json=body, headers=sent) as answer:
            return answer.status, await _body(answer)


@dataclasses.dataclass(frozen=True)
class Sent:
    """One Server-Sent Event as a client reads it."""

    id: int
    event: str
    data: dict[str, Any]


async def read_events(
    answer: aiohttp.ClientResponse, *, until: Callable[[Sent], bool], timeout: float = 10.0
) -> list[Sent]:
    """The events of an open stream up to the first for which `until` is true."""
    found: list[Sent] = []
    fields: dict[str, str] = {}
    async with asyncio.timeout(timeout):
        while True:
            line = (await answer.content.readline()).decode().rstrip("\n")
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "id" in fields:
                sent = Sent(int(fields["id"]), fields["event"], json.loads(fields["data"]))
                found.append(sent)
                if until(sent):
                    return found
            fields = {}


async def _body(answer: aiohttp.ClientResponse) -> Any:
    if answer.content_type == "application/json":
        return await answer.json()
    return await answer.text()


@contextlib.asynccontextmanager
async def serving(
    pool: dbpool.Pool, folder: Path, *, capability: str = CAPABILITY
) -> AsyncIterator[Console]:
    """The console app on 127.0.0.1 (whois for every peer) and on a serve socket."""
    config = settings.Settings(
        console=settings.ConsoleSettings(grants=GRANTS, capability=capability),
        engine=settings.EngineSettings(node_name="console-test"),
    )
    access = identity.Access.of(config.console)
    mesh = tailscale.Tailscale(str(STAND_IN), timeout=10)
    resolvers = console_web.Resolvers(
        tcp=identity.TailnetWhois(access, mesh, cache_seconds=10),
        unix=identity.ServeHeaders(access),
    )
    backend = console_web.Backend()
    backend.attach(operations.build(pool, config))
    readiness = health.Readiness(database=True, database_reason="", schema_current=True)
    app = console_web.build(readiness, backend, resolvers)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    socket_path = folder / "console.sock"
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        await web.UnixSite(runner, str(socket_path)).start()
        port = int(runner.addresses[0][1])
        yield Console(port, socket_path)
    finally:
        await runner.cleanup()
