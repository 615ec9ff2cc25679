"""Who is asking: the person behind a console request, and their role in each tenant.

There is no login page and no password. How a request's person is known depends on where it
arrived, never on what the request says about itself:

- on a loopback listener (`run --local`, or `health.host` a loopback address): the box owner,
  admin of every tenant, as with the CLI;
- on a tailnet listener: the peer address, resolved with `tailscale whois` (cached briefly per
  peer address); identity headers are ignored there, whoever sends them;
- on the `console.serve_socket` unix socket, the one `tailscale serve` proxies to: the
  `Tailscale-User-Login`, `-Name` and `Tailscale-App-Capabilities` headers serve sets (it deletes
  incoming copies first); a request without a login is a tagged device or Funnel.

Roles per tenant: viewer < operator (submit, cancel, retry) < approver < admin, granted by
`[[console.grants]]`, by the tailnet app capability `console.capability` (each grant's JSON
names `tenants` and a `role`) and in the database (`StoredGrants`: the first admin a
provisioning file names); the most permissive grant wins in each tenant. A tagged device,
or a person with no grant at all, is refused (403) with their login and the setting that would
let them in.
"""

from __future__ import annotations

import dataclasses
import email.header
import enum
import ipaddress
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

from appliance import settings
from appliance.mesh import tailscale

log = logging.getLogger(__name__)

LOGIN_HEADER = "Tailscale-User-Login"
NAME_HEADER = "Tailscale-User-Name"
CAPABILITIES_HEADER = "Tailscale-App-Capabilities"
FORWARDED_FOR_HEADER = "X-Forwarded-For"
OWNER_LOGIN = "owner@localhost"

Via = Literal["loopback", "tailnet", "serve"]


class Role(enum.IntEnum):
    """What a person may do in a tenant; each role may do what the ones below it may."""

    VIEWER = 1
    OPERATOR = 2  # submit, cancel, retry
    APPROVER = 3  # vote on approvals
    ADMIN = 4  # policy, agents, budgets, secrets metadata

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def of(cls, label: str) -> Role:
        return cls[label.upper()]


@dataclasses.dataclass(frozen=True)
class Person:
    """The person behind a request, with their role in each tenant granted to them."""

    login: str
    name: str
    node: str  # the tailnet node they came from (its name, or its address behind serve)
    via: Via
    roles: Mapping[str, Role]  # tenant -> role
    everywhere: Role | None = None  # a role in every tenant ('*' grants, the box owner)

    def role_in(self, tenant: str) -> Role | None:
        """Their role in `tenant`, or None when it is not granted to them."""
        found = self.roles.get(tenant)
        if self.everywhere is not None and (found is None or self.everywhere > found):
            return self.everywhere
        return found

    def may(self, tenant: str, role: Role) -> bool:
        mine = self.role_in(tenant)
        return mine is not None and mine >= role

    def visible(self, tenants: Iterable[str]) -> list[str]:
        """Of `tenants`, those granted to them, in order."""
        return [tenant for tenant in tenants if self.role_in(tenant) is not None]

    @property
    def actor(self) -> str:
        """How audit entries name them: login and node."""
        return f"console:{self.login} on {self.node}"

    @property
    def principal(self) -> str:
        """Who counts once among a request's approvers: the login, whatever the node."""
        return f"console:{self.login}"


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a request's person may not use the console (answered 403)."""

    login: str  # their login, the tags of a tagged device, or what is known of them
    reason: str
    remedy: str  # the setting that would let them in


class Resolver(Protocol):
    """How a listener knows the person behind a request."""

    async def resolve(
        self, peer: tuple[str, int] | None, headers: Mapping[str, str]
    ) -> Person | Refusal: ...


class StoredGrants(Protocol):
    """Roles granted in the database (the console's services, once the pool is open)."""

    async def roles_of(self, login: str) -> list[tuple[str, str]]:
        """(tenant, role) of each role granted to `login`; DependencyError while unknown."""
        ...


@dataclasses.dataclass(frozen=True)
class Access:
    """The grants of the config, of the tailnet app capability and of the database, turned
    into people."""

    grants: tuple[settings.ConsoleGrant, ...]
    capability: str
    stored: StoredGrants | None = None

    @classmethod
    def of(cls, config: settings.ConsoleSettings, stored: StoredGrants | None = None) -> Access:
        return cls(config.grants, config.capability, stored)

    async def person(
        self,
        *,
        login: str,
        name: str,
        node: str,
        via: Via,
        capabilities: Mapping[str, Sequence[Any]],
    ) -> Person | Refusal:
        """The person with every role granted to `login`; a Refusal when none is."""
        roles: dict[str, Role] = {}
        everywhere: Role | None = None
        granted = [(g.tenants, Role.of(g.role)) for g in self.grants if g.login == login]
        granted.extend(self._capability_grants(capabilities))
        if self.stored is not None:
            granted.extend(
                ((tenant,), Role.of(role)) for tenant, role in await self.stored.roles_of(login)
            )
        for tenants, role in granted:
            for tenant in tenants:
                if tenant == settings.EVERY_TENANT:
                    everywhere = role if everywhere is None else max(everywhere, role)
                else:
                    roles[tenant] = max(roles.get(tenant, role), role)
        if not roles and everywhere is None:
            return Refusal(
                login=login,
                reason=f"{login} has no role in any tenant of this console",
                remedy=self._remedy(login),
            )
        return Person(login, name or login, node, via, roles, everywhere)

    def _capability_grants(
        self, capabilities: Mapping[str, Sequence[Any]]
    ) -> list[tuple[tuple[str, ...], Role]]:
        """The grants of the app capability: JSON objects naming tenants and a role."""
        if not self.capability:
            return []
        found: list[tuple[tuple[str, ...], Role]] = []
        for value in capabilities.get(self.capability, ()):
            tenants = value.get("tenants") if isinstance(value, Mapping) else None
            role = value.get("role") if isinstance(value, Mapping) else None
            if (
                isinstance(tenants, list)
                and all(isinstance(t, str) for t in tenants)
                and role in settings.ROLES
            ):
                found.append((tuple(tenants), Role.of(str(role))))
            else:
                log.warning(
                    'a grant of %s is not {"tenants": [...], "role": ...}: ignored',
                    self.capability,
                    extra={"event": "console.bad_capability"},
                )
        return found

    def _remedy(self, login: str) -> str:
        setting = (
            f'a [[console.grants]] entry with login = "{login}", tenants and role in the '
            "config file"
        )
        if self.capability:
            setting += (
                f", or a grant of the tailnet app capability {self.capability} "
                '({"tenants": [...], "role": "viewer"}) in the tailnet policy file'
            )
        return setting


class LoopbackOwner:
    """A loopback listener: every request is the box owner's, admin of every tenant."""

    async def resolve(
        self, peer: tuple[str, int] | None, headers: Mapping[str, str]
    ) -> Person | Refusal:
        if peer is None or not ipaddress.ip_address(peer[0].partition("%")[0]).is_loopback:
            return Refusal(
                login=peer[0] if peer else "(unknown)",
                reason="the box owner's console answers loopback requests only",
                remedy="health.host = 'tailnet' (people on the tailnet, with console.grants)",
            )
        return Person(OWNER_LOGIN, "box owner", "localhost", "loopback", {}, Role.ADMIN)


class TailnetWhois:
    """A tailnet listener: the peer resolved with `tailscale whois`, reused for a while."""

    def __init__(self, access: Access, mesh: tailscale.Tailscale, *, cache_seconds: float) -> None:
        self._access = access
        self._mesh = mesh
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, tailscale.Identity]] = {}

    async def resolve(
        self, peer: tuple[str, int] | None, headers: Mapping[str, str]
    ) -> Person | Refusal:
        if peer is None:
            return Refusal("(unknown)", "the peer's address is not known", "none")
        host, port = peer[0].partition("%")[0], peer[1]
        try:
            who = await self._whois(host, port)
        except tailscale.PeerNotFoundError:
            return Refusal(
                login=host,
                reason=f"no tailnet node has the address {host}",
                remedy="reach the console from a device on this tailnet",
            )
        if who.login_name is None:
            tags = ", ".join(who.tags) or "a tagged device"
            return Refusal(
                login=tags,
                reason=f"{who.node_name} is a tagged device ({tags}); the console is for people",
                remedy="open the console from a person's device",
            )
        return await self._access.person(
            login=who.login_name,
            name=who.display_name,
            node=who.node_name,
            via="tailnet",
            capabilities=who.capabilities,
        )

    async def _whois(self, host: str, port: int) -> tailscale.Identity:
        now = time.monotonic()
        cached = self._cache.get(host)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        who = await self._mesh.whois(host, port)
        self._cache = {key: item for key, item in self._cache.items() if now - item[0] < 60}
        self._cache[host] = (now, who)
        return who


class ServeHeaders:
    """The unix socket `tailscale serve` proxies to: the identity headers serve sets."""

    def __init__(self, access: Access) -> None:
        self._access = access

    async def resolve(
        self, peer: tuple[str, int] | None, headers: Mapping[str, str]
    ) -> Person | Refusal:
        login = _decoded(headers.get(LOGIN_HEADER, ""))
        if not login:
            return Refusal(
                login="(no Tailscale-User-Login)",
                reason="a tagged device or a Funnel request: tailscale serve names no person",
                remedy="open the console from a person's device on the tailnet",
            )
        return await self._access.person(
            login=login,
            name=_decoded(headers.get(NAME_HEADER, "")),
            node=headers.get(FORWARDED_FOR_HEADER, "").split(",")[0].strip() or "tailscale serve",
            via="serve",
            capabilities=_capabilities(headers.get(CAPABILITIES_HEADER, "")),
        )


def _decoded(value: str) -> str:
    """A header value as serve sends it: non-ASCII text RFC 2047 Q-encoded (tailscale#11603)."""
    if "=?" not in value:
        return value.strip()
    try:
        parts = email.header.decode_header(value)
    except (ValueError, LookupError):
        return ""
    text = ""
    for chunk, charset in parts:
        if isinstance(chunk, bytes):
            try:
                text += chunk.decode(charset or "utf-8")
            except (UnicodeDecodeError, LookupError):
                return ""
        else:
            text += chunk
    return text.strip()


def _capabilities(value: str) -> dict[str, list[Any]]:
    """`Tailscale-App-Capabilities`: {capability: [grant JSON, ...]} (serve's own header)."""
    if not value:
        return {}
    try:
        document = json.loads(value)
    except ValueError:
        return {}
    if not isinstance(document, dict):
        return {}
    return {str(k): v for k, v in document.items() if isinstance(v, list)}


def describe_refusal(refusal: Refusal) -> str:
    """One line for logs and plain-text answers."""
    return f"{refusal.login}: {refusal.reason}; to let them in: {refusal.remedy}"
