"""One page request: who asks, what they see, and how a page answers (templates, errors).

Every page handler takes a `Visit` and returns a response; `handler` wraps it so that a
mistake or a refusal becomes an HTML page with its status and one line saying why (never a
traceback), and a state-changing form answers with a redirect (post/redirect/get), so the same
forms work with JavaScript off.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import jinja2
import pydantic
from aiohttp import web

from appliance import errors
from appliance.console import api, details, identity, services

log = logging.getLogger(__name__)

ServicesOf = Callable[[web.Request], services.Services]
PersonOf = Callable[[web.Request], identity.Person]
TokenOf = Callable[[identity.Person], str]

NAVIGATION = (
    ("tasks", "/tasks", "Tasks"),
    ("approvals", "/approvals", "Approvals"),
    ("workforce", "/workforce", "Workforce"),
    ("costs", "/costs", "Cost"),
    ("audit", "/audit", "Audit"),
    ("box", "/box", "Box"),
)


@dataclasses.dataclass(frozen=True)
class Wiring:
    """How the pages reach the console's services, person and token, and their templates."""

    services_of: ServicesOf
    person_of: PersonOf
    token_of: TokenOf
    templates: jinja2.Environment


WIRING = web.AppKey("pages", Wiring)


@dataclasses.dataclass(frozen=True)
class Visit:
    """A page request with its person and services."""

    request: web.Request
    call: api.Call
    templates: jinja2.Environment

    @property
    def person(self) -> identity.Person:
        return self.call.person

    @property
    def services(self) -> services.Services:
        return self.call.services

    @property
    def details(self) -> details.Details:
        return self.call.services.details

    async def tenants(self) -> list[str]:
        """The tenants the person sees."""
        return await self.call.tenants()

    async def tenants_where(self, role: identity.Role) -> list[str]:
        """The tenants where the person has `role` or more."""
        return [t for t in await self.tenants() if self.person.may(t, role)]

    def need(self, tenant: str, role: identity.Role, what: str) -> None:
        """404 when `tenant` is not the person's, 403 when their role there is too low."""
        self.call.need(tenant, role, what)

    def render(
        self, template: str, *, section: str, status: int = 200, **context: Any
    ) -> web.Response:
        page = self.templates.get_template(template).render(
            person=self.person,
            csrf_token=self.call.token,
            navigation=NAVIGATION,
            section=section,
            path=self.request.path_qs,
            **context,
        )
        return web.Response(status=status, text=page, content_type="text/html")

    async def form(self) -> Mapping[str, str]:
        """The posted form's fields (the token's field included)."""
        posted = await self.request.post()
        return {name: str(value) for name, value in posted.items() if isinstance(value, str)}


PageHandler = Callable[[Visit], Awaitable[web.StreamResponse]]


def handler(page: PageHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of `page`: the visit built, errors turned into error pages."""

    async def handle(request: web.Request) -> web.StreamResponse:
        wiring = request.app[WIRING]
        person = wiring.person_of(request)
        try:
            found = wiring.services_of(request)
            visit = Visit(
                request,
                api.Call(person, found, wiring.token_of(person)),
                wiring.templates,
            )
            return await page(visit)
        except errors.ApplianceError as exc:
            if exc.http_status >= 500 and not isinstance(exc, errors.DependencyError):
                log.exception(
                    "console page %s failed", request.path, extra={"event": "console.error"}
                )
            return _error_page(request, wiring, person, exc)

    return handle


def _error_page(
    request: web.Request, wiring: Wiring, person: identity.Person, exc: errors.ApplianceError
) -> web.Response:
    status = exc.http_status
    message = exc.message.splitlines()[0]
    if status >= 500 and not isinstance(exc, errors.DependencyError):
        message = "internal error (see the daemon's log)"
    page = wiring.templates.get_template("error.html").render(
        person=person,
        csrf_token=wiring.token_of(person),
        navigation=NAVIGATION,
        section="",
        path=request.path_qs,
        status=status,
        message=message,
    )
    answer = web.Response(status=status, text=page, content_type="text/html")
    if isinstance(exc, errors.DependencyError):
        answer.headers["Retry-After"] = "1"
    return answer


def redirect(location: str) -> web.Response:
    """See other: where a form's browser goes next."""
    return web.Response(status=303, headers={"Location": location})


# ---- reading forms and query strings ---------------------------------------------------------


def parsed(model: type[pydantic.BaseModel], data: Mapping[str, Any]) -> Any:
    """`data` as `model`, a mistake as InputError naming the field."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise errors.InputError(f"{where}: {first['msg']}" if where else first["msg"]) from None


def given(data: Mapping[str, str], *names: str) -> dict[str, str]:
    """The named fields that are not blank, stripped."""
    return {name: data[name].strip() for name in names if data.get(name, "").strip()}


def instant(value: str, what: str) -> dt.datetime:
    """A time from a form (`datetime-local` gives no zone: it is read as UTC)."""
    try:
        found = dt.datetime.fromisoformat(value)
    except ValueError:
        raise errors.InputError(f"{what}: not a date and time ({value!r})") from None
    return found if found.tzinfo is not None else found.replace(tzinfo=dt.UTC)


def json_value(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise errors.InputError(f"{what}: not JSON ({exc})") from None


def money(value: str | None) -> Decimal:
    try:
        return Decimal(value or "0")
    except InvalidOperation:
        return Decimal(0)
