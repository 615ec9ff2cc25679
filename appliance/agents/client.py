"""The model client: the official SDK's AsyncAnthropic, with its errors made ours.

The SDK retries 429 (after `retry-after`), 529 and 5xx with backoff, `model.max_retries`
times; what still fails becomes a DependencyError (try later), a bad request an InputError, a
refused key a ConfigError. The only network the appliance uses is this API.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from appliance import errors, redaction, settings

if TYPE_CHECKING:
    import anthropic


@dataclasses.dataclass(frozen=True)
class Reply:
    """A model reply as plain JSON data, with its request id and latency."""

    message: dict[str, Any]
    request_id: str | None
    latency_ms: float


class ModelClient:
    """One SDK client per daemon (it pools its connections).

    The SDK is imported here, not at module level: it takes ~0.7 s, which a daemon without a
    model key (or a restart that must resume its tasks within a second) should not pay.
    """

    def __init__(self, config: settings.ModelSettings) -> None:
        import anthropic

        if config.api_key is None:
            raise errors.ConfigError(
                "model.api_key is not set (APPLIANCE_MODEL__API_KEY or [model] api_key)"
            )
        # The key is a secret like the vault's: no log line, checkpoint, event or tool result
        # carries it, in any of its encodings, from the moment a client holds it.
        redaction.registry.add(config.api_key.get_secret_value(), "model.api_key")
        self._client: anthropic.AsyncAnthropic = anthropic.AsyncAnthropic(
            api_key=config.api_key.get_secret_value(),
            base_url=config.base_url,
            max_retries=config.max_retries,
            timeout=config.timeout_seconds,
        )

    async def create(self, params: dict[str, Any]) -> Reply:
        """One Messages API call (after the SDK's retries)."""
        import anthropic

        started = time.perf_counter()
        try:
            message = await self._client.messages.create(**params)
        except anthropic.AuthenticationError as exc:
            raise errors.ConfigError(f"the model API refused the key: {exc.message}") from exc
        except anthropic.PermissionDeniedError as exc:
            raise errors.ConfigError(f"the model API refused access: {exc.message}") from exc
        except anthropic.BadRequestError as exc:
            raise errors.InputError(f"the model API refused the request: {exc.message}") from exc
        except (anthropic.APIStatusError, anthropic.APIConnectionError) as exc:
            raise errors.DependencyError(f"the model API is unavailable: {exc}") from exc
        latency_ms = (time.perf_counter() - started) * 1000
        return Reply(message.model_dump(mode="json"), message._request_id, latency_ms)

    async def close(self) -> None:
        await self._client.close()
