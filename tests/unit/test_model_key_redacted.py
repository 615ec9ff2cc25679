"""The model's API key is redacted like a vault secret once a client holds it."""

from __future__ import annotations

import base64

import pydantic

from appliance import redaction, settings
from appliance.agents import client

KEY = "sk-ant-api03-unit-test-key-4f1b2c9d8e7a"


def test_a_client_registers_its_key_with_the_redactor() -> None:
    """After a client is made, the key and its base64 form are scrubbed from any text."""
    client.ModelClient(settings.ModelSettings(api_key=pydantic.SecretStr(KEY)))
    encoded = base64.b64encode(KEY.encode()).decode()
    scrubbed = redaction.registry.scrub_text(f"calling with {KEY} ({encoded})")
    assert KEY not in scrubbed
    assert encoded not in scrubbed
    assert "[redacted:model.api_key]" in scrubbed
