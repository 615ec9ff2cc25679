"""Prompt templates: how a webhook, a watched file or a schedule starts an agent directly.

A trigger that names `agent = "support"` starts the workflow `agent.run` with the input
`{"agent": "support", "prompt": <its prompt template, filled from the event>}`. Templates are
Jinja2 in its immutable sandbox (no attribute of Python internals, no mutation, bounded
`range`) with strict undefined values, so a name the event lacks is an error, never an empty
string the model would read as an answer:

- when the settings are loaded (`check`): the template parses, and every name it uses is one
  the trigger's events have (`VARIABLES`); a typo refuses the config, naming the names it can
  use;
- when an event comes (`render`): a field the event lacks (`{{ body.customer.email }}` for a
  body without `customer`) is a `TriggerInputError` naming it: the webhook answers 422, the
  watch logs it and skips that file state.

What each event offers:
- webhook: `source`, `tenant`, `delivery_id`, `headers` (the forwarded ones, lower-case names),
  `body` (the JSON body; None when it is not JSON) and `body_base64` (a body that is not UTF-8);
- file: `path` (relative to the watched folder), `name`, `size` (bytes), `type` (MIME type, from
  the name), `event` (created, modified, moved, catch-up), `text` (the file's text up to the
  watch's `attach_tokens`, empty for a binary file) and `truncated` (whether `text` was cut);
- schedule: `schedule` (its name), `slot` (the slot's time, ISO 8601 in the schedule's zone).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Literal

import jinja2
import jinja2.exceptions
import jinja2.meta
import jinja2.sandbox

from appliance import errors

Kind = Literal["webhook", "file", "schedule"]
AGENT_WORKFLOW = "agent.run"
MAX_PROMPT_CHARS = 200_000  # a filled template longer than this is refused (a runaway loop)

VARIABLES: dict[Kind, frozenset[str]] = {
    "webhook": frozenset({"source", "tenant", "delivery_id", "headers", "body", "body_base64"}),
    "file": frozenset({"path", "name", "size", "type", "event", "text", "truncated"}),
    "schedule": frozenset({"schedule", "slot"}),
}


class _Environment(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """An event's objects are data: `body.items` is the field `items`, never the dict method,
    and a field that is not there is undefined (so an error), however it is written."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict):
            return self._field(obj, attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, dict):
            return self._field(obj, argument)
        return super().getitem(obj, argument)

    def _field(self, obj: dict[Any, Any], name: Any) -> Any:
        try:
            return obj[name]
        except (KeyError, TypeError):
            return self.undefined(obj=obj, name=name)


_ENVIRONMENT = _Environment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
)


class TriggerInputError(errors.InputError):
    """An event that does not fit its trigger's prompt template (a field it lacks)."""


def check(text: str, kind: Kind) -> None:
    """Refuse a template that does not parse or names what `kind` events lack (ValueError, as
    settings validators raise)."""
    try:
        parsed = _ENVIRONMENT.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(
            f"the prompt template does not parse: {exc.message} (line {exc.lineno})"
        ) from None
    unknown = jinja2.meta.find_undeclared_variables(parsed) - VARIABLES[kind]
    if unknown:
        raise ValueError(
            f"the prompt template names {', '.join(sorted(unknown))}, which a {kind} event does "
            f"not have (it has: {', '.join(sorted(VARIABLES[kind]))})"
        )


def render(text: str, kind: Kind, values: Mapping[str, Any]) -> str:
    """The template filled from one event; TriggerInputError when the event does not fit."""
    offered = {name: values[name] for name in VARIABLES[kind] if name in values}
    try:
        prompt = _compiled(text).render(offered)
    except jinja2.UndefinedError as exc:
        raise TriggerInputError(
            f"the {kind} event does not fit the prompt: {exc.message}"
        ) from None
    except jinja2.exceptions.SecurityError as exc:
        raise TriggerInputError(f"the prompt template may not do that: {exc}") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise TriggerInputError(f"the prompt template failed on this {kind} event: {exc}") from None
    if len(prompt) > MAX_PROMPT_CHARS:
        raise TriggerInputError(
            f"the filled prompt has {len(prompt):,} characters, over {MAX_PROMPT_CHARS:,}"
        )
    if not prompt.strip():
        raise TriggerInputError(f"the prompt filled from this {kind} event is empty")
    return prompt


def agent_input(agent: str, prompt: str) -> dict[str, str]:
    """The input of `agent.run` a trigger submits."""
    return {"agent": agent, "prompt": prompt}


@functools.lru_cache(maxsize=256)
def _compiled(text: str) -> jinja2.Template:
    return _ENVIRONMENT.from_string(text)
