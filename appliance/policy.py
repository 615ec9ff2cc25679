"""Policy: which tool calls an agent may make, must have approved, or may not make.

A tenant's policy is a document (TOML, or JSON when the text starts with `{`), stored as
versioned rows by `appliance.db.policies`; a decision records the version that made it.

    [guardrails]
    max_tool_calls_per_task = 40          # the 41st call of a task is denied
    max_spend_usd_per_task = "5.00"       # once a task has spent $5.00 its calls are denied

    [[rules]]
    name = "large-refunds"
    tools = ["refund_*"]                  # glob patterns; a field left out matches anything
    classes = ["financial"]
    conditions = [{ arg = "amount", op = ">", value = 500 }]
    effect = "deny"

    [[rules]]
    name = "mail-outside-the-company"
    agents = ["support-triage"]
    tools = ["send_email"]
    conditions = [{ arg = "to", op = "domain_not_in", value = ["example.com"] }]
    effect = "require_approval"
    approvers = 2                         # two distinct people (default: approvals.approvers)
    on_denial = "fail_task"               # a denial fails the task (default: tell_agent, the
                                          # model gets the denial as the tool's error)

Semantics, in order (the first step that answers decides):

1. The policy belongs to another tenant than the call: deny (a bug upstream; fail closed).
2. Unknown tool (the caller has no action class for it, `action_class=None`) or an action class
   outside read, write, destructive, financial, customer_facing: deny. Rules cannot allow it.
3. Guardrails: `tool_calls_so_far >= max_tool_calls_per_task` or `spend_so_far >=
   max_spend_usd_per_task`: deny, whatever the rules say.
4. Rules: a rule matches when every field it sets matches (agents, tools: glob patterns;
   classes: exact) and all of its conditions hold. Among the matching rules the strictest effect
   wins: deny over require_approval over allow; order does not matter (as in Cedar, where a
   matching `forbid` overrides any `permit`). The decision names the first matching rule of the
   winning effect.
5. No rule matches: the default of the class: read and write allow; destructive, financial and
   customer_facing require approval. Write allows because `write` is the reversible, additive
   class (drafts, notes, tickets): asking a person for each would make agents unusable, and the
   irreversible writes are `destructive` by definition; a tenant tightens it with a rule.

Conditions name an argument (`arg`, dotted for nested objects: `payment.amount`):
`>`, `>=`, `<`, `<=` compare numbers; `==`, `!=` compare JSON scalars (a bool never equals a
number); `domain_in`, `domain_not_in` take the domain of an email address (after the last `@`),
of a URL (its host), or the string itself, lower-cased, and compare it with a list of domains
(a subdomain counts as its parent: `mail.example.com` is in `example.com`). A condition that
cannot be evaluated (argument missing, or of the wrong type) fails closed: it holds for deny
and require_approval rules and does not hold for allow rules, so a missing argument never
loosens the policy.
"""

from __future__ import annotations

import datetime as dt
import decimal
import difflib
import enum
import fnmatch
import hashlib
import json
import tomllib
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

import pydantic

from appliance import errors


class Effect(enum.StrEnum):
    ALLOW = "allow"
    REQUIRE_APPROVAL = "require_approval"
    DENY = "deny"


class ActionClass(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    DESTRUCTIVE = "destructive"
    FINANCIAL = "financial"
    CUSTOMER_FACING = "customer_facing"


DEFAULTS: Mapping[ActionClass, Effect] = {
    ActionClass.READ: Effect.ALLOW,
    ActionClass.WRITE: Effect.ALLOW,
    ActionClass.DESTRUCTIVE: Effect.REQUIRE_APPROVAL,
    ActionClass.FINANCIAL: Effect.REQUIRE_APPROVAL,
    ActionClass.CUSTOMER_FACING: Effect.REQUIRE_APPROVAL,
}
_STRICTNESS = {Effect.ALLOW: 0, Effect.REQUIRE_APPROVAL: 1, Effect.DENY: 2}
_NUMERIC = {">", ">=", "<", "<="}
_DOMAIN = {"domain_in", "domain_not_in"}
_TYPE_TAGS = {"bool", "int", "float", "str"}  # union members pydantic names in an error's loc

Scalar = bool | int | float | str
OnDenial = Literal["tell_agent", "fail_task"]


class Condition(pydantic.BaseModel):
    """One test on an argument of the call."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    arg: str = pydantic.Field(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    op: Literal[">", ">=", "<", "<=", "==", "!=", "domain_in", "domain_not_in"]
    value: Scalar | tuple[str, ...]

    @pydantic.model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        if self.op in _NUMERIC and (
            isinstance(self.value, bool) or not isinstance(self.value, int | float)
        ):
            raise ValueError(f"{self.op!r} needs a number as value")
        if self.op in _DOMAIN and not (isinstance(self.value, tuple) and self.value):
            raise ValueError(f"{self.op!r} needs a non-empty list of domains as value")
        if self.op in ("==", "!=") and isinstance(self.value, tuple):
            raise ValueError(f"{self.op!r} needs a string, number or boolean as value")
        return self

    def render(self) -> str:
        return f"{self.arg} {self.op} {json.dumps(_plain(self.value))}"


class Rule(pydantic.BaseModel):
    """Which calls it matches (a field left out matches anything) and what it decides."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: str | None = pydantic.Field(default=None, min_length=1, max_length=80)
    agents: tuple[str, ...] | None = None
    tools: tuple[str, ...] | None = None
    classes: tuple[ActionClass, ...] | None = None
    conditions: tuple[Condition, ...] = ()
    effect: Effect
    approvers: int | None = pydantic.Field(
        default=None, ge=1, description="require_approval: distinct people who must approve"
    )
    on_denial: OnDenial | None = pydantic.Field(
        default=None, description="require_approval: what a denial does (default tell_agent)"
    )

    @pydantic.model_validator(mode="after")
    def _approval_fields_need_approval(self) -> Rule:
        if self.effect != Effect.REQUIRE_APPROVAL and (
            self.approvers is not None or self.on_denial is not None
        ):
            raise ValueError("approvers and on_denial apply to effect = require_approval only")
        return self

    @pydantic.field_validator("agents", "tools", "classes")
    @classmethod
    def _not_empty(cls, value: tuple[object, ...] | None) -> tuple[object, ...] | None:
        if value == ():
            raise ValueError("an empty list matches nothing; leave the key out to match anything")
        return value


class Guardrails(pydantic.BaseModel):
    """Limits per task that deny a call whatever the rules say."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    max_tool_calls_per_task: int | None = pydantic.Field(default=None, ge=0)
    max_spend_usd_per_task: decimal.Decimal | None = pydantic.Field(default=None, ge=0)


class Document(pydantic.BaseModel):
    """What a person writes in a tenant's policy file."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    guardrails: Guardrails = pydantic.Field(default_factory=Guardrails)
    rules: tuple[Rule, ...] = ()

    def canonical(self) -> dict[str, Any]:
        """The document as plain JSON data, what is stored and hashed."""
        return self.model_dump(mode="json", exclude_none=True)

    def content_hash(self) -> str:
        """SHA-256 of the canonical document: the same content is the same version."""
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode()).hexdigest()

    def render(self) -> list[str]:
        """One line per setting, each naming its rule, so a diff says which rule changed."""
        lines = [
            f"guardrails.{key} = {value}"
            for key, value in sorted(self.guardrails.model_dump(exclude_none=True).items())
        ]
        for index, rule in enumerate(self.rules):
            label = rule_label(index, rule)
            for key in ("agents", "tools", "classes"):
                values = getattr(rule, key)
                if values is not None:
                    lines.append(f"{label}.{key} = {json.dumps([str(v) for v in values])}")
            lines.extend(f"{label}.when {c.render()}" for c in rule.conditions)
            lines.append(f"{label}.effect = {rule.effect}")
            if rule.approvers is not None:
                lines.append(f"{label}.approvers = {rule.approvers}")
            if rule.on_denial is not None:
                lines.append(f"{label}.on_denial = {rule.on_denial}")
        return lines


class Policy(pydantic.BaseModel):
    """A stored version of a tenant's policy (built by `appliance.db.policies` only)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    tenant_id: str
    version: int
    document: Document
    content_hash: str
    created_by: str
    created_at: dt.datetime


class Request(pydantic.BaseModel):
    """A tool call about to be made; `action_class=None` when the tool is not known."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    tenant: str
    agent: str
    tool: str
    action_class: str | None
    arguments: dict[str, Any] = pydantic.Field(default_factory=dict)
    tool_calls_so_far: int = 0
    spend_so_far: decimal.Decimal = decimal.Decimal(0)


class Decision(pydantic.BaseModel):
    """What the policy says about a call, and which rule and version said it."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    effect: Effect
    rule: str
    reason: str
    policy_version: int | None
    approvers: int | None = None
    on_denial: OnDenial = "tell_agent"


def rule_label(index: int, rule: Rule) -> str:
    """`rules[2]`, or `rules[2] "large-refunds"` when the rule has a name."""
    return f"rules[{index}]" + (f" {json.dumps(rule.name)}" if rule.name else "")


def parse(text: str) -> Document:
    """Parse and validate a policy document; InputError names the rule index, key and reason."""
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.InputError(f"policy: not valid JSON: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise errors.InputError(f"policy: not valid TOML: {exc}") from exc
    if not isinstance(data, dict):
        raise errors.InputError("policy: the document must be a table (an object)")
    try:
        return Document.model_validate(data)
    except pydantic.ValidationError as exc:
        reasons = "; ".join(_describe(e) for e in exc.errors())
        raise errors.InputError(f"policy: invalid document: {reasons}") from exc


def _describe(error: Any) -> str:
    loc = list(error["loc"])
    # Drop the union-member tags pydantic inserts (e.g. `bool`, `tuple[str, ...]`).
    loc = [p for p in loc if isinstance(p, int) or ("[" not in str(p) and p not in _TYPE_TAGS)]
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int) and i > 0:
            parts[-1] += f"[{part}]"
        else:
            parts.append(str(part))
    where = ".".join(parts) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "enum":
        message = f"{error['input']!r} is not known: {message[0].lower()}{message[1:]}"
    return f"{where}: {message}"


def evaluate(policy: Policy | None, request: Request) -> Decision:
    """Decide a call under a tenant's policy (None: no policy applied, the defaults alone)."""
    version = policy.version if policy is not None else None

    def decide(effect: Effect, rule: str, reason: str) -> Decision:
        return Decision(effect=effect, rule=rule, reason=reason, policy_version=version)

    if policy is not None and policy.tenant_id != request.tenant:
        return decide(
            Effect.DENY,
            "tenant",
            f"the policy of tenant {policy.tenant_id!r} cannot decide for {request.tenant!r}",
        )
    if request.action_class is None:
        return decide(Effect.DENY, "default", f"unknown tool {request.tool!r}")
    try:
        action_class = ActionClass(request.action_class)
    except ValueError:
        return decide(
            Effect.DENY,
            "default",
            f"unknown action class {request.action_class!r} of tool {request.tool!r}",
        )
    document = policy.document if policy is not None else Document()
    limits = document.guardrails
    if (
        limits.max_tool_calls_per_task is not None
        and request.tool_calls_so_far >= limits.max_tool_calls_per_task
    ):
        return decide(
            Effect.DENY,
            "guardrails.max_tool_calls_per_task",
            f"the task has made {request.tool_calls_so_far} tool calls, "
            f"the limit is {limits.max_tool_calls_per_task}",
        )
    if (
        limits.max_spend_usd_per_task is not None
        and request.spend_so_far >= limits.max_spend_usd_per_task
    ):
        return decide(
            Effect.DENY,
            "guardrails.max_spend_usd_per_task",
            f"the task has spent ${request.spend_so_far}, "
            f"the limit is ${limits.max_spend_usd_per_task}",
        )
    best: tuple[int, Rule] | None = None
    for index, rule in enumerate(document.rules):
        if _matches(rule, request, action_class) and (
            best is None or _STRICTNESS[rule.effect] > _STRICTNESS[best[1].effect]
        ):
            best = (index, rule)
    if best is not None:
        index, rule = best
        label = rule_label(index, rule)
        return decide(rule.effect, label, f"{label} matches: {rule.effect}").model_copy(
            update={"approvers": rule.approvers, "on_denial": rule.on_denial or "tell_agent"}
        )
    effect = DEFAULTS[action_class]
    return decide(effect, "default", f"no rule matches; {action_class} defaults to {effect}")


def diff_policies(a: Policy, b: Policy) -> str:
    """A unified diff of two versions' canonical documents (empty when they are the same)."""
    lines = difflib.unified_diff(
        a.document.render(),
        b.document.render(),
        fromfile=f"{a.tenant_id} policy v{a.version}",
        tofile=f"{b.tenant_id} policy v{b.version}",
        lineterm="",
    )
    return "\n".join(lines)


def _matches(rule: Rule, request: Request, action_class: ActionClass) -> bool:
    if rule.agents is not None and not any(
        fnmatch.fnmatchcase(request.agent, p) for p in rule.agents
    ):
        return False
    if rule.tools is not None and not any(fnmatch.fnmatchcase(request.tool, p) for p in rule.tools):
        return False
    if rule.classes is not None and action_class not in rule.classes:
        return False
    unknown = rule.effect is not Effect.ALLOW  # a condition that cannot be evaluated
    return all(_holds(c, request.arguments, unknown=unknown) for c in rule.conditions)


_MISSING = object()


def _argument(arguments: Mapping[str, Any], path: str) -> Any:
    value: Any = arguments
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _holds(condition: Condition, arguments: Mapping[str, Any], *, unknown: bool) -> bool:
    actual = _argument(arguments, condition.arg)
    expected = condition.value
    if actual is _MISSING:
        return unknown
    if condition.op in _NUMERIC:
        if isinstance(actual, bool) or not isinstance(actual, int | float):
            return unknown
        if isinstance(expected, tuple | str):  # pragma: no cover - refused when parsed
            return unknown
        limit, number = float(expected), float(actual)
        return {
            ">": number > limit,
            ">=": number >= limit,
            "<": number < limit,
            "<=": number <= limit,
        }[condition.op]
    if condition.op in ("==", "!="):
        same = actual == expected and isinstance(actual, bool) == isinstance(expected, bool)
        return same if condition.op == "==" else not same
    if not isinstance(actual, str) or not actual:
        return unknown
    if not isinstance(expected, tuple):  # pragma: no cover - refused when parsed
        return unknown
    domain = _domain(actual)
    inside = any(domain == d.lower() or domain.endswith("." + d.lower()) for d in expected)
    return inside if condition.op == "domain_in" else not inside


def _domain(value: str) -> str:
    text = value.strip()
    if "@" in text:
        return text.rsplit("@", 1)[1].strip(" >").lower()
    if "://" in text:
        return (urllib.parse.urlsplit(text).hostname or "").lower()
    return text.lower()


def _plain(value: Scalar | tuple[str, ...]) -> Any:
    return list(value) if isinstance(value, tuple) else value
