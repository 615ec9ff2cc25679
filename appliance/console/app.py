"""The console's aiohttp application: health, identity, cross-site protection, the API.

Built once by the daemon (never run here), before the database is open: its services are
attached when they exist (`Backend.attach`); until then a route that needs them answers 503
with `Retry-After`. `/healthz` and `/readyz` need no identity; every other route knows its
person first (`identity`), or answers 403 with a page naming their login and the setting that
would let them in.

Every answer carries a strict Content-Security-Policy (no inline script, nothing from another
origin) and no-sniff, no-framing headers. A request that changes state (anything but GET, HEAD,
OPTIONS) must come from the console's own origin (`Sec-Fetch-Site`, else `Origin` against
`Host`) and carry the person's token (`X-CSRF-Token` header or `csrf_token` form field;
`GET /api/v1/me` gives it), else 403.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path

import jinja2
from aiohttp import web

from appliance import errors, health
from appliance.console import api, events, identity, pages, services

log = logging.getLogger(__name__)

# Answered to anyone who reaches the listener: the probes, and /metrics, which applies its own
# rule (metrics.readers: a Prometheus server is usually a tagged device, never a console user).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}
TEMPLATES = Path(__file__).parent / "templates"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Backend:
    """The console's services, once the daemon has opened the database."""

    def __init__(self) -> None:
        self._services: services.Services | None = None

    def attach(self, attached: services.Services) -> None:
        self._services = attached

    @property
    def services(self) -> services.Services:
        if self._services is None:
            raise errors.DependencyError("the console is starting: the database is not open yet")
        return self._services

    async def roles_of(self, login: str) -> list[tuple[str, str]]:
        """The roles granted to `login` in the database (identity.StoredGrants)."""
        return await self.services.grants.roles_of(login)


@dataclasses.dataclass(frozen=True)
class Resolvers:
    """How each listener knows its person: TCP (loopback owner or tailnet whois), and the
    `tailscale serve` unix socket (its identity headers), if there is one."""

    tcp: identity.Resolver
    unix: identity.Resolver | None = None


class Csrf:
    """Per-person tokens: an HMAC of the login under a key of this process."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def token(self, person: identity.Person) -> str:
        return hmac.new(self._key, person.login.encode(), hashlib.sha256).hexdigest()

    def valid(self, person: identity.Person, token: str) -> bool:
        return hmac.compare_digest(self.token(person), token)


BACKEND = web.AppKey("backend", Backend)
RESOLVERS = web.AppKey("resolvers", Resolvers)
CSRF = web.AppKey("csrf", Csrf)
PAGES = web.AppKey("pages", jinja2.Environment)
PERSON = web.RequestKey("person", identity.Person)


def build(
    readiness: health.Readiness,
    backend: Backend,
    resolvers: Resolvers,
) -> web.Application:
    """The console app (built, never run here)."""
    app = web.Application(
        middlewares=[health.retry_after, _api_errors, _identity, _same_origin],
        client_max_size=1024 * 1024,
    )
    app[BACKEND] = backend
    app[RESOLVERS] = resolvers
    app[CSRF] = Csrf()
    app[PAGES] = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    app.on_response_prepare.append(_security_headers)
    health.add_routes(app, readiness)
    api.add_routes(app, lambda request: backend.services, _person, app[CSRF].token)
    events.add_routes(app, lambda request: backend.services, _person)
    pages.add_routes(
        app, pages.Wiring(lambda request: backend.services, _person, app[CSRF].token, app[PAGES])
    )
    return app


def _person(request: web.Request) -> identity.Person:
    return request[PERSON]


async def _security_headers(_: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


@web.middleware
async def _api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Under /api, every error is JSON `{"error": ...}`: ours with their HTTP status, a client's
    mistake in one line, never a traceback."""
    if not request.path.startswith(api.PREFIX):
        return await handler(request)
    try:
        return await handler(request)
    except errors.ApplianceError as exc:
        status = exc.http_status
        if status >= 500 and not isinstance(exc, errors.DependencyError):
            log.exception("console: %s failed", request.path, extra={"event": "console.error"})
            return api.error(500, "internal error (see the daemon's log)")
        answer = api.error(status, exc.message.splitlines()[0])
        if isinstance(exc, errors.DependencyError):
            answer.headers["Retry-After"] = "1"
        return answer
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return api.error(exc.status, exc.reason)


@web.middleware
async def _identity(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The person behind the request, by the listener it came in on; 403 for nobody we know."""
    if request.path in OPEN_PATHS or request.path.startswith(pages.STATIC_PREFIX):
        return await handler(request)
    resolvers = request.app[RESOLVERS]
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    peer: tuple[str, int] | None = None
    if isinstance(sockname, str | bytes):  # the unix socket tailscale serve proxies to
        resolver = resolvers.unix
    else:
        resolver = resolvers.tcp
        peername = transport.get_extra_info("peername") if transport is not None else None
        if isinstance(peername, tuple):
            peer = (str(peername[0]), int(peername[1]))
    if resolver is None:
        raise web.HTTPForbidden(reason="this listener knows no one")
    try:
        found = await resolver.resolve(peer, request.headers)
    except errors.DependencyError as exc:  # the database's grants cannot be read yet
        raise web.HTTPServiceUnavailable(reason=exc.message.splitlines()[0]) from exc
    if isinstance(found, identity.Refusal):
        log.info(
            "console refused %s",
            identity.describe_refusal(found),
            extra={"event": "console.refused", "login": found.login},
        )
        return _forbidden(request, found)
    request[PERSON] = found
    return await handler(request)


def _forbidden(request: web.Request, refusal: identity.Refusal) -> web.StreamResponse:
    if request.path.startswith(api.PREFIX) or "text/html" not in request.headers.get("Accept", ""):
        return api.error(403, identity.describe_refusal(refusal), login=refusal.login)
    page = request.app[PAGES].get_template("forbidden.html").render(refusal=refusal)
    return web.Response(status=403, text=page, content_type="text/html")


@web.middleware
async def _same_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A state-changing request from another site, or without the person's token: 403."""
    if request.method in SAFE_METHODS or request.path in OPEN_PATHS:
        return await handler(request)
    why = _cross_site(request)
    if why is None:
        token = request.headers.get(CSRF_HEADER, "")
        if not token and request.content_type == "application/x-www-form-urlencoded":
            token = str((await request.post()).get(CSRF_FIELD, ""))
        if not token or not request.app[CSRF].valid(request[PERSON], token):
            why = f"no valid {CSRF_HEADER} (GET {api.PREFIX}/me gives it)"
    if why is not None:
        return api.error(403, f"cross-site request refused: {why}")
    return await handler(request)


def _cross_site(request: web.Request) -> str | None:
    """Why the request is not from the console's own origin, or None when it is."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return None if site in ("same-origin", "none") else f"Sec-Fetch-Site is {site}"
    origin = request.headers.get("Origin")
    if origin is not None:
        host = urllib.parse.urlsplit(origin).netloc
        if not host or host != request.headers.get("Host", ""):
            return "its Origin is not this console's"
    return None
