"""The local Messages API stand-in, driven by the real `anthropic` SDK over a loopback socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal

import aiohttp
import anthropic
import pytest
import pytest_asyncio
from anthropic.types import (
    CacheControlEphemeralParam,
    Message,
    MessageParam,
    TextBlock,
    TextBlockParam,
    ToolUseBlock,
)

from tests.support import messages_api

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(30)]

MODEL = "claude-sonnet-4-6"  # cache floor 2,048 tokens
LONG_TEXT = "You are a careful assistant for the appliance. " * 300  # 2,700 tokens
QUESTION: list[MessageParam] = [{"role": "user", "content": "What is the status of task 42?"}]
NO_RETRIES = 0
EPHEMERAL: CacheControlEphemeralParam = {"type": "ephemeral"}


@pytest.fixture
def clock() -> messages_api.ManualClock:
    return messages_api.ManualClock()


@pytest_asyncio.fixture(loop_scope="session")
async def server(clock: messages_api.ManualClock) -> AsyncIterator[messages_api.Server]:
    """A fresh fake on a free port, with a clock that only moves when told to."""
    async with messages_api.running_server(clock=clock) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def client(server: messages_api.Server) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The real SDK client, pointed at the fake."""
    async with anthropic.AsyncAnthropic(
        api_key=server.api_key, base_url=server.base_url, max_retries=2
    ) as sdk:
        yield sdk


def cached_system(text: str = LONG_TEXT, ttl: Literal["5m", "1h"] = "5m") -> list[TextBlockParam]:
    """A system prompt of one text block with a breakpoint on it."""
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral", "ttl": ttl}}]


def prefix_tokens(system: Iterable[TextBlockParam]) -> int:
    """Tokens of a system prompt's blocks, markers removed, by the fake's documented rule."""
    return sum(
        messages_api.tokens_of({k: v for k, v in block.items() if k != "cache_control"})
        for block in system
    )


def message_tokens(messages: Iterable[MessageParam]) -> int:
    """Tokens of string-content messages by the fake's documented rule."""
    return sum(
        messages_api.tokens_of({"role": m["role"]})
        + messages_api.tokens_of({"type": "text", "text": m["content"]})
        for m in messages
    )


async def ask(
    client: anthropic.AsyncAnthropic,
    *,
    system: list[TextBlockParam] | None = None,
    messages: list[MessageParam] = QUESTION,
    model: str = MODEL,
    max_tokens: int = 256,
) -> Message:
    """One non-streaming create with the test defaults."""
    return await client.messages.create(
        model=model,
        max_tokens=max_tokens,
        messages=messages,
        system=system if system is not None else anthropic.omit,
    )


BODY: dict[str, Any] = {"model": MODEL, "max_tokens": 16, "messages": QUESTION}


class TestAuthentication:
    async def test_sdk_sends_the_key_as_bearer(
        self, server: messages_api.Server, client: anthropic.AsyncAnthropic
    ) -> None:
        """The SDK 2.x puts `api_key` in `Authorization: Bearer`, and the fake accepts it."""
        await ask(client)
        (request,) = server.requests
        assert request.headers["authorization"] == f"Bearer {server.api_key}"
        assert "x-api-key" not in request.headers

    async def test_x_api_key_header_is_accepted(self, server: messages_api.Server) -> None:
        """A raw request with `x-api-key` gets a message."""
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{server.base_url}/v1/messages",
                json=BODY,
                headers={"anthropic-version": "2023-06-01", "x-api-key": server.api_key},
            ) as response,
        ):
            assert response.status == 200
            assert (await response.json())["type"] == "message"

    async def test_wrong_key_raises_authentication_error(self, server: messages_api.Server) -> None:
        """A wrong key is a 401 `authentication_error`, which the SDK does not retry."""
        async with anthropic.AsyncAnthropic(api_key="wrong", base_url=server.base_url) as bad:
            with pytest.raises(anthropic.AuthenticationError) as caught:
                await ask(bad)
        assert caught.value.status_code == 401
        assert caught.value.body == messages_api.error_body(
            "authentication_error", "invalid x-api-key", server.requests[0].request_id
        )
        assert len(server.requests) == 1

    async def test_missing_key_raises_authentication_error(
        self, client: anthropic.AsyncAnthropic
    ) -> None:
        """A request without any key is a 401."""
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.create(
                model=MODEL,
                max_tokens=16,
                messages=QUESTION,
                extra_headers={"Authorization": anthropic.omit},
            )

    async def test_missing_version_is_rejected(self, server: messages_api.Server) -> None:
        """A request without `anthropic-version` is a 400 `invalid_request_error`."""
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{server.base_url}/v1/messages",
                json=BODY,
                headers={"x-api-key": server.api_key},
            ) as response,
        ):
            body = await response.json()
        assert response.status == 400
        assert body["error"]["type"] == "invalid_request_error"
        assert body["request_id"] == response.headers["request-id"]

    async def test_every_response_carries_a_request_id(
        self, server: messages_api.Server, client: anthropic.AsyncAnthropic
    ) -> None:
        """The SDK exposes the `request-id` header the fake sent and recorded."""
        message = await ask(client)
        assert message._request_id == server.requests[0].request_id
        assert message._request_id.startswith("req_")


class TestCreate:
    async def test_reply_parses_into_a_message(self, client: anthropic.AsyncAnthropic) -> None:
        """The default reply echoes the question and carries every usage counter."""
        message = await ask(client)
        assert message.id.startswith("msg_")
        assert message.model == MODEL
        assert message.stop_reason == "end_turn"
        assert message.content == [
            TextBlock(type="text", text="echo: What is the status of task 42", citations=None)
        ]
        usage = message.usage
        assert usage.input_tokens == message_tokens(QUESTION)
        assert usage.cache_creation_input_tokens == 0
        assert usage.cache_read_input_tokens == 0
        assert usage.cache_creation is not None
        assert usage.cache_creation.ephemeral_5m_input_tokens == 0
        assert usage.cache_creation.ephemeral_1h_input_tokens == 0
        assert usage.output_tokens == messages_api.tokens_of(message.content[0].to_dict())
        assert usage.service_tier == "standard"

    async def test_tool_use_reply_parses(
        self, server: messages_api.Server, client: anthropic.AsyncAnthropic
    ) -> None:
        """A scripted tool call arrives as a `ToolUseBlock` with `stop_reason: tool_use`."""
        server.script(messages_api.ToolUseReply("lookup_task", {"task_id": 42}))
        message = await ask(client)
        assert message.stop_reason == "tool_use"
        (block,) = message.content
        assert isinstance(block, ToolUseBlock)
        assert block.id.startswith("toolu_")
        assert (block.name, block.input) == ("lookup_task", {"task_id": 42})

    async def test_max_tokens_cuts_the_reply(
        self, server: messages_api.Server, client: anthropic.AsyncAnthropic
    ) -> None:
        """A reply longer than `max_tokens` is cut, billed at `max_tokens`, and says so."""
        server.script(messages_api.TextReply("one two three " * 20))
        message = await ask(client, max_tokens=20)
        assert message.stop_reason == "max_tokens"
        assert message.usage.output_tokens == 20
        block = message.content[0]
        assert isinstance(block, TextBlock)
        assert block.text.startswith("one two three")
        assert len(block.text) < len("one two three " * 20)

    async def test_count_tokens_equals_the_total_input_of_create(
        self, client: anthropic.AsyncAnthropic
    ) -> None:
        """count_tokens returns the sum of the three disjoint input counters of create."""
        system = cached_system()
        counted = await client.messages.count_tokens(model=MODEL, messages=QUESTION, system=system)
        usage = (await ask(client, system=system)).usage
        assert usage.cache_creation_input_tokens
        total = usage.input_tokens + usage.cache_creation_input_tokens
        assert counted.input_tokens == total + (usage.cache_read_input_tokens or 0)

    async def test_stream_accumulates_to_the_same_message(
        self, server: messages_api.Server, client: anthropic.AsyncAnthropic
    ) -> None:
        """Streaming yields the scripted text and the usage a non-streaming call reports."""
        server.script(messages_api.TextReply("A streamed answer that spans several chunks."))
        async with client.messages.stream(
            model=MODEL, max_tokens=256, messages=QUESTION, system=cached_system()
        ) as stream:
            message = await stream.get_final_message()
        block = message.content[0]
        assert isinstance(block, TextBlock)
        assert block.text == "A streamed answer that spans several chunks."
        assert message.usage.model_dump(exclude_none=True) == server.requests[0].usage

    async def test_mid_stream_error_raises(
        self, server: messages_api.Server, client: anthropic.AsyncAnthropic
    ) -> None:
        """An `error` event after the 200 surfaces as a status error with the error body."""
        server.script(messages_api.overloaded(mid_stream=True))
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with client.messages.stream(
                model=MODEL, max_tokens=256, messages=QUESTION
            ) as stream:
                await stream.get_final_message()
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["error"]["type"] == "overloaded_error"


class TestPromptCache:
    async def test_second_identical_call_reads_the_system_prefix(
        self, client: anthropic.AsyncAnthropic
    ) -> None:
        """The first call writes the system prefix, the second reads exactly it."""
        system = cached_system()
        first = (await ask(client, system=system)).usage
        second = (await ask(client, system=system)).usage
        assert first.cache_creation_input_tokens == prefix_tokens(system)
        assert first.cache_read_input_tokens == 0
        assert second.cache_read_input_tokens == prefix_tokens(system)
        assert second.cache_creation_input_tokens == 0
        assert second.input_tokens == first.input_tokens == message_tokens(QUESTION)

    async def test_prefix_below_the_model_minimum_is_not_cached(
        self, client: anthropic.AsyncAnthropic
    ) -> None:
        """Under Haiku 4.5's 4,096-token floor nothing is written or read, and nothing fails."""
        system = cached_system()
        for _ in range(2):
            usage = (await ask(client, system=system, model="claude-haiku-4-5")).usage
            assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)
            assert usage.input_tokens == prefix_tokens(system) + message_tokens(QUESTION)

    async def test_minimum_is_overridable_per_server(
        self, server: messages_api.Server, client: anthropic.AsyncAnthropic
    ) -> None:
        """Lowering a model's minimum on the server instance makes its prefix cacheable."""
        server.minimum_cacheable["claude-haiku-4-5"] = 100
        usage = (await ask(client, system=cached_system(), model="claude-haiku-4-5")).usage
        assert usage.cache_creation_input_tokens == prefix_tokens(cached_system())

    async def test_expired_entry_is_written_again(
        self, clock: messages_api.ManualClock, client: anthropic.AsyncAnthropic
    ) -> None:
        """After the 5-minute TTL the same prefix is a write again, not a read."""
        system = cached_system()
        await ask(client, system=system)
        clock.advance(301)
        usage = (await ask(client, system=system)).usage
        assert usage.cache_read_input_tokens == 0
        assert usage.cache_creation_input_tokens == prefix_tokens(system)

    async def test_a_hit_restarts_the_ttl(
        self, clock: messages_api.ManualClock, client: anthropic.AsyncAnthropic
    ) -> None:
        """Reads 4 minutes apart keep a 5-minute entry alive past its first expiry."""
        system = cached_system()
        await ask(client, system=system)
        clock.advance(240)
        await ask(client, system=system)
        clock.advance(240)
        usage = (await ask(client, system=system)).usage
        assert usage.cache_read_input_tokens == prefix_tokens(system)

    async def test_one_hour_write_is_counted_apart(self, client: anthropic.AsyncAnthropic) -> None:
        """A `ttl: 1h` breakpoint's write lands in `ephemeral_1h_input_tokens`."""
        usage = (await ask(client, system=cached_system(ttl="1h"))).usage
        assert usage.cache_creation is not None
        assert usage.cache_creation.ephemeral_1h_input_tokens == prefix_tokens(cached_system())
        assert usage.cache_creation.ephemeral_5m_input_tokens == 0

    async def test_moved_breakpoint_reads_the_earlier_prefix(
        self, client: anthropic.AsyncAnthropic
    ) -> None:
        """A breakpoint moved to the newest turn reads the last turn's entry by lookback."""
        system: list[TextBlockParam] = [{"type": "text", "text": LONG_TEXT}]
        first: list[MessageParam] = [
            {
                "role": "user",
                "content": [{"type": "text", "text": "first question", "cache_control": EPHEMERAL}],
            }
        ]
        before = (await ask(client, system=system, messages=first)).usage
        second: list[MessageParam] = [
            {"role": "user", "content": [{"type": "text", "text": "first question"}]},
            {"role": "assistant", "content": "first answer"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "second question", "cache_control": EPHEMERAL}
                ],
            },
        ]
        after = (await ask(client, system=system, messages=second)).usage
        assert after.cache_read_input_tokens == before.cache_creation_input_tokens
        assert after.cache_creation_input_tokens == message_tokens(
            [
                {"role": "assistant", "content": "first answer"},
                {"role": "user", "content": "second question"},
            ]
        )
        assert after.input_tokens == 0

    async def test_five_breakpoints_are_rejected(
        self, server: messages_api.Server, client: anthropic.AsyncAnthropic
    ) -> None:
        """More than four breakpoints is a 400 that touches neither script nor cache."""
        system = [block for n in range(5) for block in cached_system(f"part {n}")]
        with pytest.raises(anthropic.BadRequestError, match="maximum of 4"):
            await ask(client, system=system)
        assert server.requests[0].usage is None

    async def test_one_hour_after_five_minutes_is_rejected(
        self, client: anthropic.AsyncAnthropic
    ) -> None:
        """A 1h breakpoint placed after a 5m one is a 400."""
        system = [*cached_system("short lived", ttl="5m"), *cached_system("long lived", ttl="1h")]
        with pytest.raises(anthropic.BadRequestError, match="1h"):
            await ask(client, system=system)


class TestRetries:
    async def test_rate_limit_is_retried_after_retry_after(
        self, server: messages_api.Server, client: anthropic.AsyncAnthropic
    ) -> None:
        """A 429 is retried once the `retry-after` (0.6 s, above the SDK's 0.5 s backoff) passed."""
        server.script(messages_api.rate_limited(retry_after=0.6))
        message = await ask(client)
        assert message.stop_reason == "end_turn"
        first, second = server.requests
        assert (first.status, second.status) == (429, 200)
        assert (first.retry_count, second.retry_count) == (0, 1)
        assert second.received_at - first.received_at >= 0.6

    async def test_rate_limit_carries_retry_and_limit_headers(
        self, server: messages_api.Server, client: anthropic.AsyncAnthropic
    ) -> None:
        """The 429 tells the client when to come back and that its budget is spent."""
        server.script(messages_api.rate_limited(retry_after=0.1, retry_after_ms=100))
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.with_options(max_retries=NO_RETRIES).messages.create(
                model=MODEL, max_tokens=16, messages=QUESTION
            )
        response_headers = caught.value.response.headers
        assert response_headers["retry-after"] == "0.1"
        assert response_headers["retry-after-ms"] == "100"
        assert response_headers["anthropic-ratelimit-requests-remaining"] == "0"

    async def test_overloaded_is_retried(
        self, server: messages_api.Server, client: anthropic.AsyncAnthropic
    ) -> None:
        """A 529 `overloaded_error` is retried and the retry succeeds."""
        server.script(messages_api.overloaded(retry_after=0.05), messages_api.TextReply("fine"))
        message = await ask(client)
        assert message.content[0] == TextBlock(type="text", text="fine", citations=None)
        assert [r.status for r in server.requests] == [529, 200]

    async def test_api_error_raises_when_retries_run_out(
        self, server: messages_api.Server, client: anthropic.AsyncAnthropic
    ) -> None:
        """A 500 `api_error` surfaces as `InternalServerError` once no retry is left."""
        server.script(messages_api.api_error())
        with pytest.raises(anthropic.InternalServerError):
            await client.with_options(max_retries=NO_RETRIES).messages.create(
                model=MODEL, max_tokens=16, messages=QUESTION
            )

    async def test_bad_request_is_not_retried(
        self, server: messages_api.Server, client: anthropic.AsyncAnthropic
    ) -> None:
        """A 400 is raised at once: one request, and the next scripted reply stays queued."""
        server.script(messages_api.invalid_request("no"), messages_api.TextReply("unused"))
        with pytest.raises(anthropic.BadRequestError):
            await ask(client)
        assert len(server.requests) == 1
        assert server.scripted == 1
