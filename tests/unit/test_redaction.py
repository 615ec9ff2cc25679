"""The redactor: each secret caught as it is and in the forms a careless program gives it."""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from collections.abc import Callable

import pytest

from appliance import redaction

SECRET = "sk-live-Q9v/z+T3xK8pLm2w"
LABEL = "[redacted:acme/payments/api-key]"


@pytest.fixture
def redactor() -> redaction.Redactor:
    """A redactor that knows SECRET."""
    found = redaction.Redactor()
    found.add(SECRET, "acme/payments/api-key")
    return found


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


FORMS = {
    "plain": SECRET,
    "stripped of padding spaces": SECRET,
    "base64": b64(SECRET.encode()),
    "base64 unpadded": b64(SECRET.encode()).rstrip("="),
    "base64url": b64url(SECRET.encode()),
    "base64url unpadded": b64url(SECRET.encode()).rstrip("="),
    "hex": binascii.hexlify(SECRET.encode()).decode(),
    "HEX": binascii.hexlify(SECRET.encode()).decode().upper(),
    "percent-encoded": urllib.parse.quote(SECRET, safe=""),
    "form-encoded": urllib.parse.quote_plus(SECRET),
    "JSON-escaped": json.dumps(SECRET)[1:-1],
}


class TestForms:
    @pytest.mark.parametrize("name", list(FORMS))
    def test_each_form_is_replaced_by_the_label(
        self, redactor: redaction.Redactor, name: str
    ) -> None:
        """The value, base64 and base64url (padded or not), hex in both cases, percent- and
        JSON-escaped: each becomes the label inside a sentence."""
        assert redactor.scrub_text(f"before {FORMS[name]} after") == f"before {LABEL} after"

    @pytest.mark.parametrize("prefix", [b"", b"u", b"us", b"user:"])
    @pytest.mark.parametrize("encode", [b64, b64url])
    def test_inside_a_longer_base64_text_at_any_alignment(
        self, redactor: redaction.Redactor, prefix: bytes, encode: Callable[[bytes], str]
    ) -> None:
        """Basic auth of `user:secret`, or any bytes before it: what depends on the secret alone
        is replaced; at most the two characters at its edges remain."""
        text = encode(prefix + SECRET.encode() + b"!")
        scrubbed = redactor.scrub_text(text)
        assert LABEL in scrubbed
        assert len(scrubbed.replace(LABEL, "")) <= len(encode(prefix)) + 4

    def test_hex_in_mixed_case(self, redactor: redaction.Redactor) -> None:
        """Hex is caught whatever the case of each digit."""
        hexed = binascii.hexlify(SECRET.encode()).decode()
        mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(hexed))
        assert redactor.scrub_text(mixed) == LABEL

    def test_a_value_with_surrounding_whitespace_is_caught_stripped(self) -> None:
        """A secret stored with its newline is caught without it too."""
        found = redaction.Redactor()
        found.add(SECRET + "\n", "x")
        assert found.scrub_text(f"key={SECRET};") == "key=[redacted:x];"

    def test_a_short_value_is_not_registered(self) -> None:
        """Values shorter than MIN_LENGTH would hide ordinary words: not registered."""
        found = redaction.Redactor()
        found.add("abc", "x")
        assert (len(found), found.scrub_text("abc")) == (0, "abc")

    def test_the_longest_match_wins(self) -> None:
        """A secret that begins another is not left half-replaced inside the longer one."""
        found = redaction.Redactor()
        found.add("token-123456", "short")
        found.add("token-123456789", "long")
        assert found.scrub_text("token-123456789 token-123456") == (
            "[redacted:long] [redacted:short]"
        )

    def test_many_secrets(self) -> None:
        """Two hundred secrets, each still caught (the pattern is a prefix tree)."""
        found = redaction.Redactor()
        values = [f"secret-{n:04d}-{n * 7919:08d}" for n in range(200)]
        for n, value in enumerate(values):
            found.add(value, str(n))
        assert found.scrub_text(" ".join(values[::50])) == (
            "[redacted:0] [redacted:50] [redacted:100] [redacted:150]"
        )


class TestValues:
    def test_keys_values_and_numbers_of_a_structure(self) -> None:
        """Keys and strings are scrubbed; a number whose digits are a secret becomes text."""
        found = redaction.Redactor()
        found.add("31415926535", "pin")
        value = {"31415926535": [31415926535, "x 31415926535", 7, True]}
        assert found.scrub(value) == {
            "[redacted:pin]": ["[redacted:pin]", "x [redacted:pin]", 7, True]
        }

    def test_clip_scrubs_before_it_cuts(self, redactor: redaction.Redactor) -> None:
        """Cut first, the head of a secret would no longer be recognised."""
        assert redactor.clip(f"op {SECRET}", 12) == f"op {LABEL}"[:12]
        assert SECRET[:9] not in redactor.clip(f"op {SECRET}", 12)

    def test_a_tail_that_starts_inside_a_secret_drops_it_whole(
        self, redactor: redaction.Redactor
    ) -> None:
        """The last N characters of a log, when the Nth from the end falls inside a secret:
        the secret is shown as its label, not as its remaining half."""
        text = "x" * 50 + SECRET + "y" * 10
        tail = redactor.scrub_tail(text, 20)
        assert tail == LABEL + "y" * 10

    def test_a_tail_that_starts_after_a_secret(self, redactor: redaction.Redactor) -> None:
        """Nothing to widen: the tail is just the end of the text."""
        assert redactor.scrub_tail(SECRET + "z" * 30, 10) == "z" * 10


class TestErrors:
    def test_an_error_without_a_secret_is_itself(self, redactor: redaction.Redactor) -> None:
        """Nothing to hide: the very same exception, so its traceback and chain are kept."""
        error = ValueError("plain")
        assert redactor.scrub_error(error) is error

    def test_a_secret_in_a_cause_is_scrubbed_and_named(self, redactor: redaction.Redactor) -> None:
        """raise ... from KeyError(secret): a new error of the same type, its causes in text."""
        cause = KeyError(b64(SECRET.encode()))
        error = RuntimeError("request failed")
        error.__cause__ = cause
        clean = redactor.scrub_error(error)
        assert type(clean) is RuntimeError
        assert str(clean) == f"request failed (caused by KeyError: '{LABEL}')"

    def test_a_type_named_after_the_secret_becomes_a_runtime_error(
        self, redactor: redaction.Redactor
    ) -> None:
        """An exception class whose name is the secret: the replacement names only the label."""
        error = type(SECRET, (Exception,), {})("boom")
        clean = redactor.scrub_error(error)
        assert type(clean) is RuntimeError
        assert str(clean) == f"{LABEL}: boom"

    def test_an_error_with_the_secret_in_an_attribute(self, redactor: redaction.Redactor) -> None:
        """OSError keeps the filename apart from its message: the copy holds the whole text,
        with the label where the secret was."""
        error = OSError(13, "denied", SECRET)
        clean = redactor.scrub_error(error)
        assert SECRET not in str(clean)
        assert LABEL in str(clean)
