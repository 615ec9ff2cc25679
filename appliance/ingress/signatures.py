"""Webhook signatures: Standard Webhooks (the default), GitHub and Stripe. Pure functions of
headers, body, secrets and the time; nothing here does I/O.

- `standard`: headers webhook-id, webhook-timestamp, webhook-signature (`v1,<base64>` entries,
  space-separated), or the same as svix-id, svix-timestamp, svix-signature (what Svix-powered
  senders send); signs `{id}.{timestamp}.{body}`; key: the base64 after `whsec_`, decoded
  (padding optional, as for the reference library).
- `github`: headers X-Hub-Signature-256 (`sha256=<hex>`), X-GitHub-Delivery; signs the body;
  key: the secret's UTF-8 bytes.
- `stripe`: header Stripe-Signature (`t=<ts>,v1=<hex>[,v1=<hex>...]`); signs `{t}.{body}`;
  key: the secret's UTF-8 bytes, `whsec_` included (not base64-decoded: same prefix as
  Standard Webhooks, another key derivation).

All three are HMAC-SHA256 over the raw bytes, compared in constant time (`hmac.compare_digest`
on the decoded MACs). Every scheme accepts several secrets (a rotation: old and new at once) and,
where the header carries several signatures, any one that verifies. Standard Webhooks and Stripe
sign a timestamp, which must lie within `WINDOW_SECONDS` of now, in both directions (Stripe's own
library checks only the past; a future timestamp is as suspect as an old one). The window is
checked before the MAC (it is cheaper). GitHub signs no timestamp: a captured body verifies
forever: `signs_delivery` is False for it, and the caller de-duplicates its deliveries by the
body's hash besides the delivery id.

The delivery id is `webhook-id` (standard), `X-GitHub-Delivery` (github), or the `id` of the
event in the JSON body (stripe: the header has none, and the event id is what Stripe retries
with). Ids are 1-255 visible ASCII characters; a standard id may not contain `.`, which would
make the signed `{id}.{ts}.{body}` ambiguous.

Missing or malformed non-credential parts (id, timestamp, a Stripe body that is not an event)
raise MalformedDeliveryError (400); a missing or wrong signature, or a timestamp outside the
window, raises SignatureError (401).
"""

from __future__ import annotations

import abc
import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from typing import ClassVar

from appliance import errors

WINDOW_SECONDS = 300
STANDARD_PREFIX = "whsec_"
MIN_STANDARD_KEY_BYTES = 16

_ID = re.compile(r"[\x21-\x7e]{1,255}")
_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*")
SVIX_NAMES = {
    "webhook-id": "svix-id",
    "webhook-timestamp": "svix-timestamp",
    "webhook-signature": "svix-signature",
}
"""Svix-powered senders send the Standard Webhooks headers under these names."""


class MalformedDeliveryError(errors.InputError):
    """The delivery's headers or body are not well formed."""


class SignatureError(errors.ApplianceError):
    """The delivery is not signed by the source, or its timestamp is outside the window."""

    exit_code = 77
    http_status = 401


def _mac(key: bytes, *parts: bytes) -> bytes:
    digest = hmac.new(key, parts[0], hashlib.sha256)
    for part in parts[1:]:
        digest.update(part)
    return digest.digest()


def _matches(candidates: Sequence[bytes], expected: Sequence[bytes]) -> bool:
    """True when any candidate equals any expected MAC (each comparison in constant time)."""
    found = False
    for candidate in candidates:
        for mac in expected:
            found |= hmac.compare_digest(candidate, mac)
    return found


def _delivery_id(value: str | None, header: str) -> str:
    if value is None:
        raise MalformedDeliveryError(f"the {header} header is missing")
    if not _ID.fullmatch(value):
        raise MalformedDeliveryError(f"the {header} header is not 1-255 visible ASCII characters")
    return value


def _timestamp(value: str | None, where: str) -> int:
    if value is None:
        raise MalformedDeliveryError(f"{where} is missing")
    if not _TIMESTAMP.fullmatch(value):
        raise MalformedDeliveryError(f"{where} is not a unix time in seconds")
    return int(value)


def _within_window(timestamp: int, now: float, window: int) -> None:
    skew = now - timestamp
    if abs(skew) > window:
        direction = "old" if skew > 0 else "far in the future"
        raise SignatureError(f"the timestamp is {abs(skew):.0f}s {direction} (window {window}s)")


class Scheme(abc.ABC):
    """How one kind of sender signs; built once per source from its secrets."""

    name: ClassVar[str]
    headers: ClassVar[tuple[str, ...]]
    """The headers (lower case) the scheme reads."""
    signs_delivery: ClassVar[bool] = True
    """False when the signature covers the body only: a captured delivery, resent under a new
    delivery id, verifies again."""

    def __init__(self, secrets: Sequence[str]) -> None:
        if not secrets:
            raise errors.ConfigError(f"a {self.name} source needs at least one secret")
        self._keys = tuple(self.key(secret) for secret in secrets)

    @staticmethod
    @abc.abstractmethod
    def key(secret: str) -> bytes:
        """The HMAC key of a configured secret; ConfigError when it cannot be one."""

    @abc.abstractmethod
    def delivery_id(self, headers: Mapping[str, str], body: bytes) -> str:
        """The sender's id of this delivery, without verifying anything."""

    @abc.abstractmethod
    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float) -> str:
        """The delivery id when a configured secret signed this delivery within the window."""


class StandardWebhooks(Scheme):
    """Standard Webhooks v1 (`v1,<base64>` HMAC-SHA256 entries; `v1a` Ed25519 ones are skipped)."""

    name = "standard"
    headers = (
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        *(SVIX_NAMES.values()),
    )

    @staticmethod
    def key(secret: str) -> bytes:
        encoded = secret.removeprefix(STANDARD_PREFIX).rstrip("=")
        if len(encoded) % 4 == 1 or not _BASE64.fullmatch(encoded):
            raise errors.ConfigError(
                "a Standard Webhooks secret is `whsec_` and base64 (A-Z a-z 0-9 + /, padding "
                "optional); this one is not base64"
            )
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
        if len(key) < MIN_STANDARD_KEY_BYTES:
            raise errors.ConfigError(
                f"a Standard Webhooks secret must decode to at least {MIN_STANDARD_KEY_BYTES} "
                f"bytes (the spec asks for 24-64); this one has {len(key)}"
            )
        return key

    @staticmethod
    def _header(headers: Mapping[str, str], name: str) -> str | None:
        """`webhook-<x>`, or Svix's `svix-<x>` in its place; both, with two values, is 400."""
        value, alias = headers.get(name), headers.get(SVIX_NAMES[name])
        if value is not None and alias is not None and value != alias:
            raise MalformedDeliveryError(f"the {name} and {SVIX_NAMES[name]} headers differ")
        return value if value is not None else alias

    def delivery_id(self, headers: Mapping[str, str], body: bytes) -> str:
        value = _delivery_id(self._header(headers, "webhook-id"), "webhook-id (or svix-id)")
        if "." in value:
            raise MalformedDeliveryError("the webhook-id header contains '.'")
        return value

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float) -> str:
        delivery = self.delivery_id(headers, body)
        stamp = self._header(headers, "webhook-timestamp")
        timestamp = _timestamp(stamp, "the webhook-timestamp (or svix-timestamp) header")
        signature = self._header(headers, "webhook-signature")
        if signature is None:
            raise SignatureError("the webhook-signature (or svix-signature) header is missing")
        _within_window(timestamp, now, WINDOW_SECONDS)
        candidates = []
        for entry in signature.split(" "):
            version, _, encoded = entry.partition(",")
            if version != "v1":
                continue
            try:
                candidates.append(base64.b64decode(encoded, validate=True))
            except ValueError:  # binascii.Error, or a non-ASCII string
                continue
        prefix = f"{delivery}.{stamp}.".encode("ascii")
        expected = [_mac(key, prefix, body) for key in self._keys]
        if not _matches(candidates, expected):
            raise SignatureError("no v1 signature of the webhook-signature header verifies")
        return delivery


class GitHub(Scheme):
    """GitHub's `X-Hub-Signature-256: sha256=<hex>` over the body; no timestamp."""

    name = "github"
    headers = ("x-hub-signature-256", "x-github-delivery")
    signs_delivery = False

    @staticmethod
    def key(secret: str) -> bytes:
        if not secret:
            raise errors.ConfigError("a GitHub webhook secret may not be empty")
        return secret.encode("utf-8")

    def delivery_id(self, headers: Mapping[str, str], body: bytes) -> str:
        return _delivery_id(headers.get("x-github-delivery"), "X-GitHub-Delivery")

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float) -> str:
        delivery = self.delivery_id(headers, body)
        signature = headers.get("x-hub-signature-256")
        if signature is None:
            raise SignatureError("the X-Hub-Signature-256 header is missing")
        algorithm, _, digest = signature.partition("=")
        if algorithm != "sha256" or not _HEX_SHA256.fullmatch(digest):
            raise SignatureError("the X-Hub-Signature-256 header is not sha256=<64 hex digits>")
        expected = [_mac(key, body) for key in self._keys]
        if not _matches([bytes.fromhex(digest)], expected):
            raise SignatureError("the X-Hub-Signature-256 signature does not verify")
        return delivery


class Stripe(Scheme):
    """Stripe's `Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex>...]` over `{t}.{body}`."""

    name = "stripe"
    headers = ("stripe-signature",)

    @staticmethod
    def key(secret: str) -> bytes:
        if not secret:
            raise errors.ConfigError("a Stripe webhook secret may not be empty")
        return secret.encode("utf-8")  # `whsec_` and all, unlike Standard Webhooks

    def delivery_id(self, headers: Mapping[str, str], body: bytes) -> str:
        try:
            event = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise MalformedDeliveryError("a Stripe delivery's body is not JSON") from exc
        event_id = event.get("id") if isinstance(event, dict) else None
        if not isinstance(event_id, str):
            raise MalformedDeliveryError("a Stripe delivery's body has no string `id`")
        return _delivery_id(event_id, "event id")

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float) -> str:
        header = headers.get("stripe-signature")
        if header is None:
            raise SignatureError("the Stripe-Signature header is missing")
        stamps: list[str] = []
        candidates: list[bytes] = []
        for item in header.split(","):
            scheme, _, value = item.strip().partition("=")
            if scheme == "t":
                stamps.append(value)
            elif scheme == "v1" and _HEX_SHA256.fullmatch(value):
                candidates.append(bytes.fromhex(value))
        if len(stamps) != 1:
            raise MalformedDeliveryError("the Stripe-Signature header needs exactly one t=")
        timestamp = _timestamp(stamps[0], "the t= of the Stripe-Signature header")
        if not candidates:
            raise SignatureError("the Stripe-Signature header has no v1 signature")
        _within_window(timestamp, now, WINDOW_SECONDS)
        prefix = f"{stamps[0]}.".encode("ascii")
        expected = [_mac(key, prefix, body) for key in self._keys]
        if not _matches(candidates, expected):
            raise SignatureError("no v1 signature of the Stripe-Signature header verifies")
        return self.delivery_id(headers, body)


SCHEMES: dict[str, type[Scheme]] = {s.name: s for s in (StandardWebhooks, GitHub, Stripe)}


def scheme(name: str, secrets: Sequence[str]) -> Scheme:
    """The verifier of scheme `name` over these secrets."""
    try:
        kind = SCHEMES[name]
    except KeyError:
        raise errors.ConfigError(
            f"unknown webhook scheme {name!r}; known: {', '.join(SCHEMES)}"
        ) from None
    return kind(secrets)


def sign_standard(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value a Standard Webhooks sender computes."""
    mac = _mac(StandardWebhooks.key(secret), f"{delivery_id}.{timestamp}.".encode(), body)
    return "v1," + base64.b64encode(mac).decode("ascii")


def sign_github(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value GitHub computes."""
    return "sha256=" + _mac(GitHub.key(secret), body).hex()


def sign_stripe(secret: str, timestamp: int, body: bytes) -> str:
    """The `Stripe-Signature` value Stripe computes (one v1 signature)."""
    mac = _mac(Stripe.key(secret), f"{timestamp}.".encode(), body)
    return f"t={timestamp},v1={mac.hex()}"
