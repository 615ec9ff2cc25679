"""A local stand-in for the Anthropic Messages API, for tests that drive the real SDK.

`running_server()` serves `create_app(server)` on 127.0.0.1 (a free port) and yields the
`Server`: its `base_url` goes to `anthropic.AsyncAnthropic(api_key=..., base_url=...)`. The
server answers `POST /v1/messages` (JSON, or server-sent events when `stream` is true) and
`POST /v1/messages/count_tokens`, in the wire shapes of the reference (agents.md 1.7).

Requests: a key in `x-api-key: <key>` or `authorization: Bearer <key>` (the SDK 2.x sends the
latter), else 401 `authentication_error`; an `anthropic-version` header, else 400. Every
response carries `request-id: req_<hex>`; every error body is
`{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}`.

Replies: `server.script(...)` queues replies for the next `POST /v1/messages` calls, one each:
`TextReply`, `ToolUseReply` (one tool call, or several), or a `Fault` (see `rate_limited`,
`overloaded`, `api_error`, `invalid_request`). Without a scripted reply the answer is the text
`echo: <the first eight words of the last user message>` with `stop_reason: "end_turn"`.

Token counting (one rule, used by create, count_tokens and the cache alike):

- the tokens of a text are the matches of the regex `\\w+|[^\\w\\s]` (Python `re`, Unicode);
- the tokens of a JSON value are the tokens of its canonical JSON:
  `json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`;
- the prompt is a sequence of *segments*, in the order tools -> system -> messages: each tool
  definition; each system block (a string `system` counts as one `{"type": "text", "text": ...}`
  block); for each message (role user, assistant, or system as SDK 2.12 allows) a
  `{"role": <role>}` segment followed by each content block (string
  content counts as one text block). Each segment is taken with its top-level `cache_control`
  key removed. Other request fields (model, tool_choice, thinking, ...) are not counted;
- the prompt's tokens are the sum of its segments' tokens;
- `output_tokens` is the sum of the reply's content blocks' tokens, capped at `max_tokens`
  (a reply that does not fit is cut at a token boundary of its text, or a tool_use that does
  not fit is dropped, and `stop_reason` becomes `"max_tokens"`).

Prompt caching (per the reference 1.1-1.5, simplified):

- a breakpoint is a `cache_control: {"type": "ephemeral", "ttl": "5m" | "1h"}` marker (ttl
  defaults to 5m) on a tool, a system block, or a message content block; a top-level
  `cache_control` marks the last content block. More than 4 breakpoints, or a 1h breakpoint
  after a 5m one, is a 400 `invalid_request_error`;
- a prefix is identified by the SHA-256 of the model name and the canonical JSON of every
  segment up to and including its last block (markers removed);
- read: for each breakpoint, its own block and up to `lookback_blocks` (20) content blocks
  before it are looked up, nearest first; the longest live prefix found by any breakpoint is
  `cache_read_input_tokens`, and its entry's TTL starts again;
- write: each breakpoint after the read, in order, whose prefix has at least the model's
  minimum (`Server.minimum_for`) tokens is written; the tokens from the previous read or write
  up to it count as `cache_creation_input_tokens`, split by that breakpoint's ttl into
  `cache_creation.ephemeral_5m_input_tokens` / `ephemeral_1h_input_tokens`. A prefix below the
  minimum is neither read nor written, and is no error;
- `input_tokens` is what lies after the last read or written prefix, so the three counters are
  disjoint and add up to the prompt's tokens;
- entries expire by `Server.clock` (seconds; injectable). A create touches the cache only when
  it is answered with a message (or a 200 stream, even one that ends in a scripted `error`
  event); 400s, scripted HTTP faults and count_tokens never do.

Every request is recorded in `server.requests` (`RecordedRequest`: lower-cased headers, parsed
body, status, request id, usage answered, arrival time on the monotonic clock).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from aiohttp import typedefs, web

DEFAULT_API_KEY = "sk-ant-test-0123456789"
TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")
MAX_BREAKPOINTS = 4
ROLES = ("user", "assistant", "system")  # the SDK 2.12 also sends system-role messages
LOOKBACK_BLOCKS = 20
TTL_SECONDS: Mapping[str, float] = {"5m": 300.0, "1h": 3600.0}
DEFAULT_MINIMUM_CACHEABLE = 1024
# Minimum cacheable prefix in tokens, by model-name prefix (the longest matching prefix wins);
# from the reference, section 1.2.
MINIMUM_CACHEABLE: Mapping[str, int] = {
    "claude-opus-4-6": 4096,
    "claude-opus-4-5": 4096,
    "claude-haiku-4-5": 4096,
    "claude-sonnet-4-6": 2048,
    "claude-sonnet-4-5": 1024,
    "claude-opus-4-1": 1024,
    "claude-opus-4": 1024,
    "claude-sonnet-4": 1024,
    "claude-3-7-sonnet": 1024,
    "claude-3-5-haiku": 2048,
    "claude-3-haiku": 2048,
}
RATE_LIMIT = 1000
ECHO_WORDS = 8
STREAM_CHUNK_CHARS = 16

_WORD = re.compile(r"\w+")
_ERROR_TYPES: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


# --- replies -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TextReply:
    """The assistant answers with one text block."""

    text: str
    stop_reason: str = "end_turn"


@dataclasses.dataclass(frozen=True)
class ToolUseReply:
    """The assistant asks for one tool call (after an optional text block), and for the calls
    of `more` after it in the same reply (parallel tool use)."""

    name: str
    input: Mapping[str, Any]
    id: str | None = None
    text: str | None = None
    more: tuple[ToolUseReply, ...] = ()


@dataclasses.dataclass(frozen=True)
class Fault:
    """An error answer; `mid_stream` sends it as an SSE `error` event after a 200 when streaming."""

    status: int
    error_type: str
    message: str
    retry_after: float | None = None
    retry_after_ms: int | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    mid_stream: bool = False


Reply = TextReply | ToolUseReply | Fault


def rate_limited(retry_after: float = 0.1, *, retry_after_ms: int | None = None) -> Fault:
    """A 429 `rate_limit_error` with `retry-after` (seconds) and exhausted rate-limit headers."""
    return Fault(
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit",
        retry_after=retry_after,
        retry_after_ms=retry_after_ms,
    )


def overloaded(retry_after: float = 0.1, *, mid_stream: bool = False) -> Fault:
    """A 529 `overloaded_error` with `retry-after` (seconds)."""
    return Fault(
        529, "overloaded_error", "Overloaded", retry_after=retry_after, mid_stream=mid_stream
    )


def api_error() -> Fault:
    """A 500 `api_error`."""
    return Fault(500, "api_error", "Internal server error")


def invalid_request(message: str = "scripted invalid request") -> Fault:
    """A 400 `invalid_request_error`."""
    return Fault(400, "invalid_request_error", message)


# --- token counting and the prompt -----------------------------------------------------------


def canonical_json(value: Any) -> str:
    """The one serialisation that is counted and hashed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def count_text_tokens(text: str) -> int:
    """Tokens of a text: matches of `\\w+|[^\\w\\s]`."""
    return len(TOKEN_PATTERN.findall(text))


def tokens_of(value: Any) -> int:
    """Tokens of a JSON value: the tokens of its canonical JSON."""
    return count_text_tokens(canonical_json(value))


class InvalidRequestError(Exception):
    """The request is malformed; answered with a 400 `invalid_request_error`."""


@dataclasses.dataclass(frozen=True)
class Segment:
    """One counted unit of the prompt: a tool, a system block, a role marker or a content block."""

    value: Any
    json: str
    tokens: int
    is_block: bool
    ttl: str | None = None


@dataclasses.dataclass(frozen=True)
class Prompt:
    """The prompt of a request as segments, in cache-prefix order (tools -> system -> messages)."""

    segments: tuple[Segment, ...]

    @property
    def tokens(self) -> int:
        return sum(segment.tokens for segment in self.segments)

    @property
    def breakpoints(self) -> list[tuple[int, str]]:
        """(segment index, ttl) of each breakpoint, in prefix order."""
        return [(i, s.ttl) for i, s in enumerate(self.segments) if s.ttl is not None]

    def cumulative_tokens(self) -> list[int]:
        """Tokens of the prefix ending with each segment."""
        totals: list[int] = []
        running = 0
        for segment in self.segments:
            running += segment.tokens
            totals.append(running)
        return totals

    def prefix_hashes(self, model: str) -> list[str]:
        """The cache key of the prefix ending with each segment."""
        digest = hashlib.sha256(model.encode() + b"\n")
        hashes: list[str] = []
        for segment in self.segments:
            digest.update(segment.json.encode() + b"\n")
            hashes.append(digest.copy().hexdigest())
        return hashes


def _ttl_of(marker: Any) -> str:
    if not isinstance(marker, dict) or marker.get("type") != "ephemeral":
        raise InvalidRequestError('cache_control: type must be "ephemeral"')
    ttl = marker.get("ttl", "5m")
    if ttl not in TTL_SECONDS:
        raise InvalidRequestError(f'cache_control.ttl: must be "5m" or "1h", not {ttl!r}')
    return str(ttl)


def _segment(value: Any, where: str, *, is_block: bool = True) -> Segment:
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{where}: expected an object")
    ttl = _ttl_of(value["cache_control"]) if "cache_control" in value else None
    clean = {key: item for key, item in value.items() if key != "cache_control"}
    text = canonical_json(clean)
    return Segment(clean, text, count_text_tokens(text), is_block, ttl)


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def parse_prompt(body: Mapping[str, Any]) -> Prompt:
    """The prompt's segments, with the breakpoint rules checked (`InvalidRequestError`)."""
    segments: list[Segment] = []
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise InvalidRequestError("tools: expected a list")
    segments.extend(_segment(tool, f"tools.{i}") for i, tool in enumerate(tools))
    system = body.get("system")
    if isinstance(system, str):
        segments.append(_segment(_text_block(system), "system"))
    elif isinstance(system, list):
        segments.extend(_segment(block, f"system.{i}") for i, block in enumerate(system))
    elif system is not None:
        raise InvalidRequestError("system: expected a string or a list of text blocks")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages: expected a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InvalidRequestError(f"messages.{i}: expected a role of {', '.join(ROLES)}")
        role = message["role"]
        segments.append(_segment({"role": role}, f"messages.{i}", is_block=False))
        content = message.get("content")
        if isinstance(content, str):
            content = [_text_block(content)]
        if not isinstance(content, list):
            raise InvalidRequestError(f"messages.{i}.content: expected a string or a list")
        segments.extend(
            _segment(block, f"messages.{i}.content.{j}") for j, block in enumerate(content)
        )
    if "cache_control" in body and body["cache_control"] is not None:
        ttl = _ttl_of(body["cache_control"])
        last = max(i for i, segment in enumerate(segments) if segment.is_block)
        if segments[last].ttl is None:
            segments[last] = dataclasses.replace(segments[last], ttl=ttl)
    prompt = Prompt(tuple(segments))
    _check_breakpoints(prompt)
    return prompt


def _check_breakpoints(prompt: Prompt) -> None:
    breakpoints = prompt.breakpoints
    if len(breakpoints) > MAX_BREAKPOINTS:
        raise InvalidRequestError(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(breakpoints)}."
        )
    seen_5m = False
    for _, ttl in breakpoints:
        if ttl == "5m":
            seen_5m = True
        elif seen_5m:
            raise InvalidRequestError(
                "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block"
            )


# --- the server's state ----------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class RecordedRequest:
    """One request as the server saw it, and what it answered."""

    method: str
    path: str
    headers: dict[str, str]
    received_at: float
    request_id: str
    body: Any = None
    status: int = 0
    usage: dict[str, Any] | None = None

    @property
    def retry_count(self) -> int:
        """The SDK's `x-stainless-retry-count` (0 on a first attempt or when absent)."""
        return int(self.headers.get("x-stainless-retry-count", "0"))


@dataclasses.dataclass(frozen=True)
class CacheUsage:
    """The three disjoint input counters of one create, the write split by ttl."""

    input_tokens: int
    read: int
    write_5m: int
    write_1h: int

    @property
    def write(self) -> int:
        return self.write_5m + self.write_1h


@dataclasses.dataclass(eq=False)
class _CacheEntry:
    expires_at: float
    ttl_seconds: float


@dataclasses.dataclass(eq=False)
class Server:
    """The fake's configuration and state: script, prompt cache, recorded requests."""

    api_key: str = DEFAULT_API_KEY
    clock: Callable[[], float] = time.monotonic
    minimum_cacheable: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict(MINIMUM_CACHEABLE)
    )
    default_minimum_cacheable: int = DEFAULT_MINIMUM_CACHEABLE
    lookback_blocks: int = LOOKBACK_BLOCKS
    base_url: str = ""
    requests: list[RecordedRequest] = dataclasses.field(default_factory=list, repr=False)
    _script: collections.deque[Reply] = dataclasses.field(
        default_factory=collections.deque, repr=False
    )
    _cache: dict[str, _CacheEntry] = dataclasses.field(default_factory=dict, repr=False)

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next creates, in order."""
        self._script.extend(replies)

    @property
    def scripted(self) -> int:
        """How many queued replies are still unused."""
        return len(self._script)

    def minimum_for(self, model: str) -> int:
        """The minimum cacheable prefix of `model` (longest matching name prefix, else default)."""
        matches = [name for name in self.minimum_cacheable if model.startswith(name)]
        if not matches:
            return self.default_minimum_cacheable
        return self.minimum_cacheable[max(matches, key=len)]

    def clear_cache(self) -> None:
        """Forget every cached prefix."""
        self._cache.clear()

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """The recorded requests to one path, in arrival order."""
        return [request for request in self.requests if request.path == path]

    def next_reply(self, body: Mapping[str, Any]) -> Reply:
        """The next scripted reply, else the default echo of the last user message."""
        if self._script:
            return self._script.popleft()
        return TextReply(" ".join(["echo:", *_last_user_words(body)[:ECHO_WORDS]]))

    def apply_cache(self, model: str, prompt: Prompt) -> CacheUsage:
        """Read and write the cache for one create; see the module docstring for the rules."""
        now = self.clock()
        self._cache = {key: e for key, e in self._cache.items() if e.expires_at > now}
        hashes = prompt.prefix_hashes(model)
        cumulative = prompt.cumulative_tokens()
        blocks = [i for i, segment in enumerate(prompt.segments) if segment.is_block]
        covered = -1
        for position, _ in prompt.breakpoints:
            index = blocks.index(position)
            for candidate in reversed(blocks[max(0, index - self.lookback_blocks) : index + 1]):
                if candidate <= covered:
                    break
                if hashes[candidate] in self._cache:
                    covered = candidate
                    break
        read = cumulative[covered] if covered >= 0 else 0
        if covered >= 0:
            entry = self._cache[hashes[covered]]
            entry.expires_at = max(entry.expires_at, now + entry.ttl_seconds)
        writes = {"5m": 0, "1h": 0}
        minimum = self.minimum_for(model)
        for position, ttl in prompt.breakpoints:
            if position <= covered or cumulative[position] < minimum:
                continue
            writes[ttl] += cumulative[position] - (cumulative[covered] if covered >= 0 else 0)
            self._cache[hashes[position]] = _CacheEntry(now + TTL_SECONDS[ttl], TTL_SECONDS[ttl])
            covered = position
        cached = cumulative[covered] if covered >= 0 else 0
        return CacheUsage(prompt.tokens - cached, read, writes["5m"], writes["1h"])


def _last_user_words(body: Mapping[str, Any]) -> list[str]:
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    if not users:
        return []
    content = users[-1].get("content")
    blocks = [_text_block(content)] if isinstance(content, str) else content or []
    texts: list[str] = []
    for block in blocks:
        if block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_result":
            inner = block.get("content")
            if isinstance(inner, str):
                texts.append(inner)
            elif isinstance(inner, list):
                texts.extend(str(b.get("text", "")) for b in inner if b.get("type") == "text")
    return _WORD.findall(" ".join(texts))


# --- rendering -------------------------------------------------------------------------------


def _content_of(reply: TextReply | ToolUseReply) -> tuple[list[dict[str, Any]], str]:
    if isinstance(reply, TextReply):
        return [_text_block(reply.text)], reply.stop_reason
    content = [_text_block(reply.text)] if reply.text else []
    for call in (reply, *reply.more):
        tool_id = call.id or f"toolu_{secrets.token_hex(12)}"
        content.append(
            {"type": "tool_use", "id": tool_id, "name": call.name, "input": dict(call.input)}
        )
    return content, "tool_use"


def fit_output(
    content: Sequence[dict[str, Any]], max_tokens: int
) -> tuple[list[dict[str, Any]], int, bool]:
    """The content that fits in `max_tokens`, its output tokens, and whether it was cut."""
    kept: list[dict[str, Any]] = []
    used = 0
    for block in content:
        size = tokens_of(block)
        if used + size <= max_tokens:
            kept.append(block)
            used += size
            continue
        room = max_tokens - used - tokens_of(_text_block(""))
        matches = list(TOKEN_PATTERN.finditer(block["text"])) if block["type"] == "text" else []
        if room > 0 and matches:
            piece = _text_block(block["text"][: matches[min(room, len(matches)) - 1].end()])
            kept.append(piece)
            used += tokens_of(piece)
        return kept, min(used, max_tokens), True
    return kept, used, False


def _usage(cache: CacheUsage, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": cache.input_tokens,
        "cache_creation_input_tokens": cache.write,
        "cache_read_input_tokens": cache.read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache.write_5m,
            "ephemeral_1h_input_tokens": cache.write_1h,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _rate_limit_headers(remaining: int, reset_seconds: float) -> dict[str, str]:
    reset = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=reset_seconds)
    stamp = reset.isoformat(timespec="seconds").replace("+00:00", "Z")
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        headers[f"anthropic-ratelimit-{kind}-limit"] = str(RATE_LIMIT)
        headers[f"anthropic-ratelimit-{kind}-remaining"] = str(remaining)
        headers[f"anthropic-ratelimit-{kind}-reset"] = stamp
    return headers


def error_body(error_type: str, message: str, request_id: str) -> dict[str, Any]:
    """The API's error envelope."""
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }


def _error(
    status: int,
    error_type: str,
    message: str,
    request_id: str,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return web.json_response(
        error_body(error_type, message, request_id), status=status, headers=headers
    )


def _fault_response(fault: Fault, request_id: str) -> web.Response:
    headers = dict(fault.headers)
    if fault.retry_after is not None:
        headers["retry-after"] = format(fault.retry_after, "g")
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = str(fault.retry_after_ms)
    if fault.status == 429:
        headers.update(_rate_limit_headers(0, fault.retry_after or 1.0))
    return _error(fault.status, fault.error_type, fault.message, request_id, headers)


# --- the app ---------------------------------------------------------------------------------

SERVER_KEY = web.AppKey("server", Server)
RECORD_KEY = web.RequestKey("record", RecordedRequest)


def _authorized(request: web.Request, api_key: str) -> bool:
    if request.headers.get("x-api-key") == api_key:
        return True
    return request.headers.get("authorization") == f"Bearer {api_key}"


@web.middleware
async def _envelope(request: web.Request, handler: typedefs.Handler) -> web.StreamResponse:
    """Records the request, checks auth and version, turns failures into error envelopes."""
    server = request.app[SERVER_KEY]
    request_id = f"req_{secrets.token_hex(12)}"
    record = RecordedRequest(
        request.method,
        request.path,
        {key.lower(): value for key, value in request.headers.items()},
        time.monotonic(),
        request_id,
    )
    server.requests.append(record)
    request[RECORD_KEY] = record
    response: web.StreamResponse
    if not _authorized(request, server.api_key):
        response = _error(401, "authentication_error", "invalid x-api-key", request_id)
    elif "anthropic-version" not in request.headers:
        response = _error(
            400, "invalid_request_error", "anthropic-version: header is required", request_id
        )
    else:
        try:
            response = await handler(request)
        except InvalidRequestError as exc:
            response = _error(400, "invalid_request_error", str(exc), request_id)
        except web.HTTPException as exc:
            error_type = _ERROR_TYPES.get(exc.status, "api_error")
            response = _error(exc.status, error_type, exc.reason, request_id)
    if not response.prepared:
        response.headers["request-id"] = request_id
    record.status = response.status
    return response


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise InvalidRequestError(f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    request[RECORD_KEY].body = body
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequestError("model: field required")
    return body


async def _create(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER_KEY]
    record = request[RECORD_KEY]
    body = await _json_body(request)
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        raise InvalidRequestError("max_tokens: expected a non-negative integer")
    stream = body.get("stream", False) is True
    prompt = parse_prompt(body)
    reply = server.next_reply(body)
    if isinstance(reply, Fault) and not (reply.mid_stream and stream):
        return _fault_response(reply, record.request_id)
    cache = server.apply_cache(body["model"], prompt)
    content: list[dict[str, Any]] = []
    output_tokens, stop_reason = 0, "end_turn"
    if not isinstance(reply, Fault):
        full, stop_reason = _content_of(reply)
        content, output_tokens, cut = fit_output(full, max_tokens)
        if cut:
            stop_reason = "max_tokens"
    usage = _usage(cache, output_tokens)
    record.usage = usage
    message = {
        "id": f"msg_{secrets.token_hex(12)}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }
    headers = _rate_limit_headers(RATE_LIMIT - 1, 60.0)
    if stream:
        fault = reply if isinstance(reply, Fault) else None
        return await _stream(request, message, headers, fault)
    return web.json_response(message, headers=headers)


async def _send(response: web.StreamResponse, event: str, data: Mapping[str, Any]) -> None:
    await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())


async def _stream(
    request: web.Request,
    message: dict[str, Any],
    headers: dict[str, str],
    fault: Fault | None,
) -> web.StreamResponse:
    """The message as server-sent events (reference 1.7), or a mid-stream `error` event."""
    record = request[RECORD_KEY]
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "text/event-stream"
    response.headers["cache-control"] = "no-cache"
    response.headers["request-id"] = record.request_id
    await response.prepare(request)
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 0}}
    await _send(response, "message_start", {"type": "message_start", "message": start})
    await _send(response, "ping", {"type": "ping"})
    if fault is not None:
        body = error_body(fault.error_type, fault.message, record.request_id)
        await _send(response, "error", body)
        await response.write_eof()
        return response
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opening: dict[str, Any] = _text_block("")
            deltas = [{"type": "text_delta", "text": piece} for piece in _chunks(block["text"])]
        else:
            opening = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": piece}
                for piece in _chunks(json.dumps(block["input"]))
            ]
        await _send(
            response,
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": opening},
        )
        for delta in deltas:
            await _send(
                response,
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        await _send(response, "content_block_stop", {"type": "content_block_stop", "index": index})
    delta_usage = {
        key: value for key, value in usage.items() if key not in ("cache_creation", "service_tier")
    }
    await _send(
        response,
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": delta_usage,
        },
    )
    await _send(response, "message_stop", {"type": "message_stop"})
    await response.write_eof()
    return response


def _chunks(text: str) -> list[str]:
    return [text[i : i + STREAM_CHUNK_CHARS] for i in range(0, len(text), STREAM_CHUNK_CHARS)]


async def _count_tokens(request: web.Request) -> web.Response:
    body = await _json_body(request)
    return web.json_response({"input_tokens": parse_prompt(body).tokens})


def create_app(server: Server) -> web.Application:
    """The fake's app over `server`'s state; built, never run here."""
    app = web.Application(middlewares=[_envelope])
    app[SERVER_KEY] = server
    app.router.add_post("/v1/messages", _create)
    app.router.add_post("/v1/messages/count_tokens", _count_tokens)
    return app


@contextlib.asynccontextmanager
async def running_server(
    *,
    api_key: str = DEFAULT_API_KEY,
    clock: Callable[[], float] = time.monotonic,
    minimum_cacheable: Mapping[str, int] | None = None,
    default_minimum_cacheable: int = DEFAULT_MINIMUM_CACHEABLE,
    lookback_blocks: int = LOOKBACK_BLOCKS,
) -> AsyncIterator[Server]:
    """Serve a fresh `Server` on 127.0.0.1 (a free port) for the block; `minimum_cacheable`
    entries override or extend the built-in table."""
    server = Server(
        api_key=api_key,
        clock=clock,
        default_minimum_cacheable=default_minimum_cacheable,
        lookback_blocks=lookback_blocks,
    )
    server.minimum_cacheable.update(minimum_cacheable or {})
    runner = web.AppRunner(create_app(server), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        server.base_url = f"http://{host}:{port}"
        yield server
    finally:
        await runner.cleanup()


class ManualClock:
    """A clock for TTL tests: stands still until `advance`d."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
