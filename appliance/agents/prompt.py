"""The request of each model call, with its stable prefix marked for prompt caching.

The prefix is tools (sorted by name, serialised canonically), then the system prompt (a fixed
preamble, the agent's persona and, when the agent's context is its whole collection, the
collection's passages): nothing in it varies by task or by time, so every call of every task
of an agent version reuses one cache entry. Breakpoints (at most 4; 3 used) go in the API's
order: on the last tool, on the last system block (the persona or the collection), and on the
last block of the conversation so far, so a multi-turn loop reads its own history from the
cache. A prefix shorter than the
model's minimum cacheable length is not cached by the API, silently; it is reported here.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from typing import Any

PREAMBLE = (
    "You are an agent running inside an appliance on the operator's own network. Work only from "
    "the task, the passages given to you (each cites its source) and the results of your tools. "
    "Cite the sources you rely on. When you are done, answer plainly."
)

# Minimum cacheable prefix per model family (tokens), from the provider's documentation;
# unknown models are assumed to need the common 1,024.
MIN_CACHEABLE = {
    "claude-opus-4-6": 4096,
    "claude-opus-4-5": 4096,
    "claude-haiku-4-5": 4096,
    "claude-sonnet-4-6": 2048,
    "claude-3-5-haiku": 2048,
    "claude-3-haiku": 2048,
    "claude-sonnet-4-5": 1024,
    "claude-sonnet-4": 1024,
    "claude-opus-4-1": 1024,
    "claude-opus-4": 1024,
}
DEFAULT_MIN_CACHEABLE = 1024
_TOKEN = re.compile(r"\w+|[^\w\s]")


def estimate_tokens(value: Any) -> int:
    """A deterministic token estimate of text or of JSON-serialisable content."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return len(_TOKEN.findall(text))


def min_cacheable(model: str) -> int:
    """The model's minimum cacheable prefix (matched by family prefix, dated ids included)."""
    for family in sorted(MIN_CACHEABLE, key=len, reverse=True):
        if model.startswith(family):
            return MIN_CACHEABLE[family]
    return DEFAULT_MIN_CACHEABLE


def stable_prefix_tokens(persona: str, tools: list[dict[str, Any]]) -> int:
    """The estimate of the prefix every call of an agent shares: tools, preamble, persona."""
    return estimate_tokens(tools) + estimate_tokens(PREAMBLE) + estimate_tokens(persona)


@dataclasses.dataclass(frozen=True)
class Request:
    """The keyword arguments of messages.create, and what was found about its cacheability."""

    params: dict[str, Any]
    prefix_tokens: int
    input_estimate: int
    cache_note: str


def build(
    *,
    model: str,
    persona: str,
    tools: list[dict[str, Any]],
    messages: list[dict[str, Any]],
    max_tokens: int,
    ttl: str,
    documents: str = "",
) -> Request:
    """The request for one call; the caller's messages are not modified. `documents` is the
    agent's whole collection, rendered, when that is its context (`agents.context_choice`)."""
    marker = {"type": "ephemeral", "ttl": ttl}
    tool_defs = [json.loads(json.dumps(t, sort_keys=True)) for t in tools]
    if tool_defs:
        tool_defs[-1]["cache_control"] = marker
    system: list[dict[str, Any]] = [
        {"type": "text", "text": PREAMBLE},
        {"type": "text", "text": persona},
    ]
    if documents:
        system.append({"type": "text", "text": documents})
    system[-1]["cache_control"] = marker
    history = copy.deepcopy(messages)
    if history and (len(history) > 1 or tool_defs):
        last = history[-1]
        if isinstance(last["content"], str):
            last["content"] = [{"type": "text", "text": last["content"]}]
        last["content"][-1]["cache_control"] = marker
    prefix_tokens = stable_prefix_tokens(persona, tools) + estimate_tokens(documents)
    floor = min_cacheable(model)
    if prefix_tokens < floor:
        note = (
            f"not cacheable: stable prefix ~{prefix_tokens} tokens is below the {floor}-token "
            f"minimum of {model}"
        )
    else:
        note = f"stable prefix ~{prefix_tokens} tokens cached ({ttl})"
    params: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "system": system,
        "messages": history,
    }
    if tool_defs:
        params["tools"] = tool_defs
    input_estimate = prefix_tokens + estimate_tokens(history)
    return Request(params, prefix_tokens, input_estimate, note)
