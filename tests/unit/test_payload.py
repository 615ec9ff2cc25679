"""A verified delivery's body as task input: JSON kept exactly, text, or base64; JSON the task
could not keep as sent (what Postgres or JSON itself cannot hold) refused with a one-line
reason that quotes nothing of the body."""

from __future__ import annotations

import base64
import json

import pytest

from appliance.engine import context
from appliance.ingress import payload, signatures

SECRET_WORD = "hunter2-in-the-body"


def decoded(body: bytes, **headers: str) -> dict[str, object]:
    """The task input of `body` (with these headers) from source `shop`, delivery `msg_1`."""
    return payload.task_input(source="shop", delivery_id="msg_1", headers=headers, body=body)


UNSTORABLE = {
    "a number beyond a double": b'{"amount": 1e999}',
    "a negative one": b'{"amount": -1e400}',
    "one deep inside": b'{"a": [1, 2, {"b": 1.5e309}]}',
    "NaN": b'{"amount": NaN}',
    "Infinity": b"[Infinity]",
    "-Infinity": b'{"x": -Infinity}',
    "a NUL escape": b'{"name": "a\\u0000b"}',
    "a NUL escape in a key": b'{"a\\u0000": 1}',
    "a lone high surrogate": b'{"name": "\\ud800"}',
    "a lone low surrogate in a key": b'{"\\udfff": 1}',
    "a reversed pair": b'["\\udc00\\ud800"]',
    "a duplicate key": b'{"id": 1, "id": 2}',
    "a duplicate key deep inside": b'{"a": {"b": [{"c": 1, "c": 1}]}}',
    "arrays nested 65 deep": b"[" * 65 + b"]" * 65,
    "objects nested 65 deep": b'{"a":' * 65 + b"1" + b"}" * 65,
    "nesting past the recursion limit": b"[" * 100_000 + b"]" * 100_000,
    "an integer of 1,001 digits": b'{"n": ' + b"9" * 1001 + b"}",
    "an integer of 5,000 digits": b"-" + b"1" * 5000,
}


class TestRefused:
    @pytest.mark.parametrize("body", UNSTORABLE.values(), ids=UNSTORABLE.keys())
    def test_json_the_task_cannot_keep_is_malformed(self, body: bytes) -> None:
        """400 (MalformedDeliveryError) with a one-line reason."""
        with pytest.raises(signatures.MalformedDeliveryError) as caught:
            decoded(body)
        assert caught.value.http_status == 400
        assert "\n" not in caught.value.message
        assert caught.value.message.startswith("the body is JSON")

    def test_the_reason_quotes_nothing_of_the_body(self) -> None:
        """A key or value of the body never appears in the reason."""
        body = json.dumps({SECRET_WORD: 1}).encode()[:-1] + f', "{SECRET_WORD}": 2}}'.encode()
        with pytest.raises(signatures.MalformedDeliveryError) as caught:
            decoded(body)
        assert SECRET_WORD not in caught.value.message

    @pytest.mark.parametrize("value", ["a\x00b", "\udcff", "\ud800x"])
    def test_a_forwarded_header_that_postgres_cannot_store_is_malformed(self, value: str) -> None:
        """A forwarded header with NUL or lone surrogates (non-UTF-8 bytes) is 400."""
        with pytest.raises(signatures.MalformedDeliveryError, match="user-agent"):
            decoded(b"{}", **{"user-agent": value})


class TestKept:
    @pytest.mark.parametrize(
        "body",
        [
            b'{"amount": 1.7976931348623157e308}',
            b'{"n": ' + b"9" * 1000 + b"}",
            b'{"pair": "\\ud83d\\ude00", "text": "caf\\u00e9"}',
            b"[" * 64 + b"]" * 64,
            b'{"a": {"a": 1}, "b": {"a": 2}}',
            b'"just a string"',
            b"[1, 2.5, null, true]",
            b'{"amount": 1e-400}',
        ],
    )
    def test_storable_json_is_kept_and_encodes_for_postgres(self, body: bytes) -> None:
        """Edge cases that are storable pass, equal to json.loads, and the engine can encode."""
        task_input = decoded(body)
        assert task_input["body"] == json.loads(body)
        context.encode(task_input, "the task input is")

    def test_text_that_is_not_json_is_kept_as_text(self) -> None:
        """Not JSON (a form post): the text."""
        assert decoded(b"a=1&b=NaN")["body"] == "a=1&b=NaN"

    @pytest.mark.parametrize(
        "body", [b"\xff\xfe\x00", b"plain\x00text", b'{"a": "\x00"}', b"\xed\xa0\x80"]
    )
    def test_bytes_postgres_cannot_hold_as_text_go_as_base64(self, body: bytes) -> None:
        """Not UTF-8 (surrogates encoded in UTF-8 included), or text with a raw NUL: body null,
        the bytes in body_base64, exactly."""
        task_input = decoded(body)
        assert task_input["body"] is None
        assert base64.b64decode(str(task_input["body_base64"])) == body
        context.encode(task_input, "the task input is")

    def test_only_forwarded_headers_are_kept(self) -> None:
        """Signatures and timestamps never reach the input; svix-id does."""
        headers = {"svix-id": "msg_1", "svix-signature": "v1,x", "webhook-timestamp": "1"}
        assert decoded(b"{}", **headers)["headers"] == {"svix-id": "msg_1"}
