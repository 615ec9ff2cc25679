"""Webhook signature schemes: published known-answer vectors, the timestamp window, rotation,
tampering, wrong secrets and malformed headers (edge.md section 6, targets T8/T9)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pydantic
import pytest

from appliance import errors, settings
from appliance.ingress import signatures

# Standard Webhooks: the reference implementation's test vector.
STD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
STD_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
STD_TIMESTAMP = 1614265330
STD_BODY = b'{"test": 2432232314}'
STD_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
OTHER_STD_SECRET = "whsec_" + base64.b64encode(b"another secret of 24 byte").decode()

# GitHub: the vector of "Validating webhook deliveries".
GH_SECRET = "It's a Secret to Everybody"
GH_BODY = b"Hello, World!"
GH_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
GH_DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"

STRIPE_SECRET = "whsec_test_secret"
STRIPE_BODY = b'{\n  "id": "evt_test_webhook",\n  "object": "event"\n}'
STRIPE_TIMESTAMP = 1700000000


def standard_headers(
    signature: str = STD_SIGNATURE, *, delivery_id: str = STD_ID, timestamp: int = STD_TIMESTAMP
) -> dict[str, str]:
    """The three Standard Webhooks headers."""
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def standard(*secrets: str) -> signatures.Scheme:
    """A Standard Webhooks verifier over these secrets (the vector's by default)."""
    return signatures.scheme("standard", secrets or (STD_SECRET,))


def github_headers(signature: str = GH_SIGNATURE) -> dict[str, str]:
    """GitHub's signature and delivery headers."""
    return {"x-hub-signature-256": signature, "x-github-delivery": GH_DELIVERY}


def stripe_mac(secret: str, timestamp: int, body: bytes) -> str:
    """Stripe's v1 signature, computed here from the documented recipe (not the module's)."""
    signed = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def stripe_headers(header: str) -> dict[str, str]:
    """The Stripe-Signature header."""
    return {"stripe-signature": header}


class TestStandardWebhooksVector:
    def test_signing_reproduces_the_published_signature(self) -> None:
        """sign_standard gives the reference suite's signature for its secret, id, time, body."""
        assert signatures.sign_standard(STD_SECRET, STD_ID, STD_TIMESTAMP, STD_BODY) == (
            STD_SIGNATURE
        )

    def test_the_published_delivery_verifies(self) -> None:
        """The reference suite's delivery verifies and yields its webhook-id."""
        verified = standard().verify(standard_headers(), STD_BODY, now=STD_TIMESTAMP)
        assert verified == STD_ID


class TestStandardWebhooksWindow:
    @pytest.mark.parametrize("skew", [-299, -300, 299, 300])
    def test_a_timestamp_within_300s_either_way_is_accepted(self, skew: int) -> None:
        """A timestamp up to 300 s before or after now verifies (T9)."""
        assert standard().verify(standard_headers(), STD_BODY, now=STD_TIMESTAMP + skew) == STD_ID

    @pytest.mark.parametrize("skew", [-301, 301])
    def test_a_timestamp_301s_away_either_way_is_rejected(self, skew: int) -> None:
        """A timestamp 301 s in the past or the future fails, its signature notwithstanding."""
        with pytest.raises(signatures.SignatureError):
            standard().verify(standard_headers(), STD_BODY, now=STD_TIMESTAMP + skew)


class TestStandardWebhooksRotation:
    def test_any_matching_signature_among_several_verifies(self) -> None:
        """A header with a wrong v1 entry before the right one verifies."""
        wrong = signatures.sign_standard(OTHER_STD_SECRET, STD_ID, STD_TIMESTAMP, STD_BODY)
        headers = standard_headers(f"{wrong} {STD_SIGNATURE}")
        assert standard().verify(headers, STD_BODY, now=STD_TIMESTAMP) == STD_ID

    def test_a_delivery_signed_with_the_old_secret_verifies_during_rotation(self) -> None:
        """With secrets (new, old) configured, a delivery signed with the old one verifies."""
        verifier = standard(OTHER_STD_SECRET, STD_SECRET)
        assert verifier.verify(standard_headers(), STD_BODY, now=STD_TIMESTAMP) == STD_ID

    def test_entries_of_other_versions_are_skipped(self) -> None:
        """v1a (Ed25519) and unknown entries are ignored; the v1 entry decides."""
        headers = standard_headers(f"v1a,AAAA v2,{STD_SIGNATURE[3:]} {STD_SIGNATURE}")
        assert standard().verify(headers, STD_BODY, now=STD_TIMESTAMP) == STD_ID

    def test_only_other_versions_is_rejected(self) -> None:
        """The published signature under another version label does not verify."""
        headers = standard_headers("v1a," + STD_SIGNATURE[3:])
        with pytest.raises(signatures.SignatureError):
            standard().verify(headers, STD_BODY, now=STD_TIMESTAMP)


class TestStandardWebhooksTampering:
    def test_a_changed_body_is_rejected(self) -> None:
        """One byte changed in the body fails verification."""
        with pytest.raises(signatures.SignatureError):
            standard().verify(standard_headers(), b'{"test": 2432232315}', now=STD_TIMESTAMP)

    def test_a_changed_id_is_rejected(self) -> None:
        """The signature covers the webhook-id: another id fails."""
        headers = standard_headers(delivery_id="msg_other")
        with pytest.raises(signatures.SignatureError):
            standard().verify(headers, STD_BODY, now=STD_TIMESTAMP)

    def test_a_changed_timestamp_is_rejected(self) -> None:
        """The signature covers the timestamp: a fresher one fails."""
        headers = standard_headers(timestamp=STD_TIMESTAMP + 1)
        with pytest.raises(signatures.SignatureError):
            standard().verify(headers, STD_BODY, now=STD_TIMESTAMP)

    def test_a_wrong_secret_is_rejected(self) -> None:
        """A verifier holding another secret rejects the published delivery."""
        with pytest.raises(signatures.SignatureError):
            standard(OTHER_STD_SECRET).verify(standard_headers(), STD_BODY, now=STD_TIMESTAMP)


class TestStandardWebhooksMalformed:
    def test_a_missing_signature_is_unauthorised(self) -> None:
        """No webhook-signature header is a SignatureError (401)."""
        headers = standard_headers()
        del headers["webhook-signature"]
        with pytest.raises(signatures.SignatureError):
            standard().verify(headers, STD_BODY, now=STD_TIMESTAMP)

    def test_a_missing_id_is_malformed(self) -> None:
        """No webhook-id header is a MalformedDeliveryError (400)."""
        headers = standard_headers()
        del headers["webhook-id"]
        with pytest.raises(signatures.MalformedDeliveryError):
            standard().verify(headers, STD_BODY, now=STD_TIMESTAMP)

    def test_an_id_with_a_dot_is_malformed(self) -> None:
        """A '.' in webhook-id would make `{id}.{ts}.{body}` ambiguous: refused."""
        headers = standard_headers(delivery_id="msg.1")
        with pytest.raises(signatures.MalformedDeliveryError):
            standard().verify(headers, STD_BODY, now=STD_TIMESTAMP)

    @pytest.mark.parametrize("stamp", ["", "16142653.30", "+1614265330", "1_614_265_330", "soon"])
    def test_a_timestamp_that_is_not_unix_seconds_is_malformed(self, stamp: str) -> None:
        """webhook-timestamp must be decimal digits only."""
        headers = {**standard_headers(), "webhook-timestamp": stamp}
        with pytest.raises(signatures.MalformedDeliveryError):
            standard().verify(headers, STD_BODY, now=STD_TIMESTAMP)

    @pytest.mark.parametrize(
        "signature", ["", "v1", "v1,", "v1,not base64!", "g0hM9SsE+OTPJTGt", "v1,é€", "v1,AAAA"]
    )
    def test_garbage_signatures_are_rejected_not_crashed_on(self, signature: str) -> None:
        """Entries that are empty, not base64 or not ASCII fail as a SignatureError."""
        with pytest.raises(signatures.SignatureError):
            standard().verify(standard_headers(signature), STD_BODY, now=STD_TIMESTAMP)

    @pytest.mark.parametrize(
        "secret",
        [
            "whsec_not base64!",
            "whsec_" + "QUJD",
            "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVV-_=",
            "whsec_" + "A" * 33,
        ],
    )
    def test_a_secret_that_is_not_a_base64_key_is_a_config_error(self, secret: str) -> None:
        """A secret that is not base64 (or of a length no base64 has), or that decodes to a key
        too short, fails at configuration, and the message does not quote it."""
        with pytest.raises(errors.ConfigError) as caught:
            standard(secret)
        assert secret.removeprefix("whsec_") not in caught.value.message


def unpadded(secret: str) -> str:
    return secret.rstrip("=")


class TestStandardWebhooksSecretForms:
    @pytest.mark.parametrize("size", [16, 17, 20, 24, 32, 35, 64])
    def test_an_unpadded_secret_verifies_like_its_padded_form(self, size: int) -> None:
        """`whsec_` + base64 without its `=` padding (accepted by the reference library) is the
        same key as with it, for every length of padding."""
        key = bytes(range(size))
        padded = "whsec_" + base64.b64encode(key).decode()
        body = b'{"n": 1}'
        signature = signatures.sign_standard(padded, STD_ID, STD_TIMESTAMP, body)
        headers = standard_headers(signature)
        for secret in (padded, unpadded(padded), unpadded(padded).removeprefix("whsec_")):
            assert standard(secret).verify(headers, body, now=STD_TIMESTAMP) == STD_ID

    def test_the_published_secret_without_padding_verifies(self) -> None:
        """The reference vector, its secret stripped of any padding, still verifies."""
        verifier = standard(unpadded(STD_SECRET))
        assert verifier.verify(standard_headers(), STD_BODY, now=STD_TIMESTAMP) == STD_ID


class TestSvixHeaderNames:
    @staticmethod
    def svix(headers: dict[str, str]) -> dict[str, str]:
        return {name.replace("webhook-", "svix-"): value for name, value in headers.items()}

    def test_svix_names_verify_as_the_standard_ones(self) -> None:
        """svix-id, svix-timestamp and svix-signature stand for the webhook-* headers."""
        headers = self.svix(standard_headers())
        assert standard().verify(headers, STD_BODY, now=STD_TIMESTAMP) == STD_ID

    @pytest.mark.parametrize("kept", ["webhook-id", "webhook-timestamp", "webhook-signature"])
    def test_a_mix_of_both_names_verifies(self, kept: str) -> None:
        """Each header is read under either name."""
        headers = {**self.svix(standard_headers()), kept: standard_headers()[kept]}
        del headers[kept.replace("webhook-", "svix-")]
        assert standard().verify(headers, STD_BODY, now=STD_TIMESTAMP) == STD_ID

    def test_both_names_with_one_value_verify(self) -> None:
        """The same value under both names is not ambiguous."""
        headers = {**standard_headers(), **self.svix(standard_headers())}
        assert standard().verify(headers, STD_BODY, now=STD_TIMESTAMP) == STD_ID

    @pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp"])
    def test_both_names_with_two_values_are_malformed(self, name: str) -> None:
        """webhook-id: a and svix-id: b is refused as ambiguous (400)."""
        headers = {**standard_headers(), name.replace("webhook-", "svix-"): "1614265331"}
        with pytest.raises(signatures.MalformedDeliveryError):
            standard().verify(headers, STD_BODY, now=STD_TIMESTAMP)

    def test_a_tampered_svix_id_is_rejected(self) -> None:
        """The signature covers the id under its Svix name too."""
        headers = {**self.svix(standard_headers()), "svix-id": "msg_other"}
        with pytest.raises(signatures.SignatureError):
            standard().verify(headers, STD_BODY, now=STD_TIMESTAMP)


class TestGitHub:
    def test_signing_reproduces_the_published_signature(self) -> None:
        """sign_github gives the documented signature of 'Hello, World!'."""
        assert signatures.sign_github(GH_SECRET, GH_BODY) == GH_SIGNATURE

    def test_the_published_delivery_verifies(self) -> None:
        """GitHub's documented body and signature verify and yield X-GitHub-Delivery."""
        verifier = signatures.scheme("github", [GH_SECRET])
        assert verifier.verify(github_headers(), GH_BODY, now=0) == GH_DELIVERY

    def test_an_upper_case_hex_signature_verifies(self) -> None:
        """The hex digest is compared as bytes, whatever its letter case."""
        verifier = signatures.scheme("github", [GH_SECRET])
        headers = github_headers("sha256=" + GH_SIGNATURE[7:].upper())
        assert verifier.verify(headers, GH_BODY, now=0) == GH_DELIVERY

    def test_a_changed_body_is_rejected(self) -> None:
        """Another body fails verification."""
        verifier = signatures.scheme("github", [GH_SECRET])
        with pytest.raises(signatures.SignatureError):
            verifier.verify(github_headers(), b"Hello, World?", now=0)

    def test_a_wrong_secret_is_rejected(self) -> None:
        """A verifier holding another secret rejects the documented delivery."""
        verifier = signatures.scheme("github", ["not the secret"])
        with pytest.raises(signatures.SignatureError):
            verifier.verify(github_headers(), GH_BODY, now=0)

    def test_any_configured_secret_verifies_during_rotation(self) -> None:
        """With secrets (new, old), the delivery signed with the old one verifies."""
        verifier = signatures.scheme("github", ["the new secret", GH_SECRET])
        assert verifier.verify(github_headers(), GH_BODY, now=0) == GH_DELIVERY

    @pytest.mark.parametrize(
        "signature",
        ["", "sha256=", "sha1=" + GH_SIGNATURE[7:], "sha256=" + "z" * 64, GH_SIGNATURE[7:]],
    )
    def test_a_malformed_signature_header_is_rejected(self, signature: str) -> None:
        """A header that is not sha256=<64 hex digits> is a SignatureError."""
        verifier = signatures.scheme("github", [GH_SECRET])
        with pytest.raises(signatures.SignatureError):
            verifier.verify(github_headers(signature), GH_BODY, now=0)

    def test_a_missing_signature_is_unauthorised(self) -> None:
        """No X-Hub-Signature-256 header is a SignatureError."""
        verifier = signatures.scheme("github", [GH_SECRET])
        with pytest.raises(signatures.SignatureError):
            verifier.verify({"x-github-delivery": GH_DELIVERY}, GH_BODY, now=0)

    def test_a_missing_delivery_id_is_malformed(self) -> None:
        """No X-GitHub-Delivery header is a MalformedDeliveryError."""
        verifier = signatures.scheme("github", [GH_SECRET])
        with pytest.raises(signatures.MalformedDeliveryError):
            verifier.verify({"x-hub-signature-256": GH_SIGNATURE}, GH_BODY, now=0)


class TestStripe:
    def test_signing_follows_the_documented_recipe(self) -> None:
        """sign_stripe is t=<ts>,v1=HMAC-SHA256(secret as UTF-8, '{t}.{body}') in hex."""
        expected = f"t={STRIPE_TIMESTAMP},v1=" + stripe_mac(
            STRIPE_SECRET, STRIPE_TIMESTAMP, STRIPE_BODY
        )
        assert signatures.sign_stripe(STRIPE_SECRET, STRIPE_TIMESTAMP, STRIPE_BODY) == expected

    def test_a_signed_event_verifies_and_yields_its_id(self) -> None:
        """A delivery signed with the whole secret verifies; its id is the event's `id`."""
        header = (
            f"t={STRIPE_TIMESTAMP},v1={stripe_mac(STRIPE_SECRET, STRIPE_TIMESTAMP, STRIPE_BODY)}"
        )
        verifier = signatures.scheme("stripe", [STRIPE_SECRET])
        verified = verifier.verify(stripe_headers(header), STRIPE_BODY, now=STRIPE_TIMESTAMP)
        assert verified == "evt_test_webhook"

    def test_the_key_is_not_the_base64_decoded_secret(self) -> None:
        """A signature keyed the Standard Webhooks way (prefix stripped, decoded) fails."""
        decoded = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        signed = f"{STRIPE_TIMESTAMP}.".encode() + STRIPE_BODY
        mac = hmac.new(decoded, signed, hashlib.sha256).hexdigest()
        verifier = signatures.scheme("stripe", [STD_SECRET])
        with pytest.raises(signatures.SignatureError):
            verifier.verify(
                stripe_headers(f"t={STRIPE_TIMESTAMP},v1={mac}"), STRIPE_BODY, now=STRIPE_TIMESTAMP
            )

    @pytest.mark.parametrize("skew", [-299, 299])
    def test_a_timestamp_within_300s_is_accepted(self, skew: int) -> None:
        """t up to 300 s before or after now verifies."""
        header = signatures.sign_stripe(STRIPE_SECRET, STRIPE_TIMESTAMP, STRIPE_BODY)
        verifier = signatures.scheme("stripe", [STRIPE_SECRET])
        assert verifier.verify(
            stripe_headers(header), STRIPE_BODY, now=STRIPE_TIMESTAMP + skew
        ) == ("evt_test_webhook")

    @pytest.mark.parametrize("skew", [-301, 301])
    def test_a_timestamp_301s_away_is_rejected(self, skew: int) -> None:
        """t 301 s in the past or the future fails (Stripe's library checks only the past)."""
        header = signatures.sign_stripe(STRIPE_SECRET, STRIPE_TIMESTAMP, STRIPE_BODY)
        verifier = signatures.scheme("stripe", [STRIPE_SECRET])
        with pytest.raises(signatures.SignatureError):
            verifier.verify(stripe_headers(header), STRIPE_BODY, now=STRIPE_TIMESTAMP + skew)

    def test_any_of_several_v1_signatures_verifies(self) -> None:
        """During Stripe's secret rotation the header carries several v1; one match suffices."""
        right = stripe_mac(STRIPE_SECRET, STRIPE_TIMESTAMP, STRIPE_BODY)
        wrong = stripe_mac("whsec_old", STRIPE_TIMESTAMP, STRIPE_BODY)
        header = f"t={STRIPE_TIMESTAMP},v1={wrong},v0={right},v1={right}"
        verifier = signatures.scheme("stripe", [STRIPE_SECRET])
        assert verifier.verify(stripe_headers(header), STRIPE_BODY, now=STRIPE_TIMESTAMP) == (
            "evt_test_webhook"
        )

    def test_a_v0_signature_alone_is_rejected(self) -> None:
        """Only v1 entries count: the right MAC labelled v0 fails."""
        right = stripe_mac(STRIPE_SECRET, STRIPE_TIMESTAMP, STRIPE_BODY)
        verifier = signatures.scheme("stripe", [STRIPE_SECRET])
        with pytest.raises(signatures.SignatureError):
            verifier.verify(
                stripe_headers(f"t={STRIPE_TIMESTAMP},v0={right}"),
                STRIPE_BODY,
                now=STRIPE_TIMESTAMP,
            )

    def test_a_changed_body_is_rejected(self) -> None:
        """Another body under the same header fails."""
        header = signatures.sign_stripe(STRIPE_SECRET, STRIPE_TIMESTAMP, STRIPE_BODY)
        verifier = signatures.scheme("stripe", [STRIPE_SECRET])
        with pytest.raises(signatures.SignatureError):
            verifier.verify(stripe_headers(header), b'{"id": "evt_other"}', now=STRIPE_TIMESTAMP)

    def test_a_wrong_secret_is_rejected(self) -> None:
        """A verifier holding another secret rejects the delivery."""
        header = signatures.sign_stripe(STRIPE_SECRET, STRIPE_TIMESTAMP, STRIPE_BODY)
        verifier = signatures.scheme("stripe", ["whsec_other"])
        with pytest.raises(signatures.SignatureError):
            verifier.verify(stripe_headers(header), STRIPE_BODY, now=STRIPE_TIMESTAMP)

    @pytest.mark.parametrize("header", ["v1=" + "0" * 64, "t=1,t=2,v1=" + "0" * 64, "t=soon,v1=00"])
    def test_a_header_without_one_numeric_t_is_malformed(self, header: str) -> None:
        """Stripe-Signature needs exactly one t=<unix seconds>."""
        verifier = signatures.scheme("stripe", [STRIPE_SECRET])
        with pytest.raises(signatures.MalformedDeliveryError):
            verifier.verify(stripe_headers(header), STRIPE_BODY, now=STRIPE_TIMESTAMP)

    def test_a_missing_header_is_unauthorised(self) -> None:
        """No Stripe-Signature header is a SignatureError."""
        verifier = signatures.scheme("stripe", [STRIPE_SECRET])
        with pytest.raises(signatures.SignatureError):
            verifier.verify({}, STRIPE_BODY, now=STRIPE_TIMESTAMP)

    @pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"object": "event"}', b'{"id": 7}'])
    def test_a_signed_body_that_is_not_an_event_is_malformed(self, body: bytes) -> None:
        """A verified body without a string `id` has no delivery id: MalformedDeliveryError."""
        header = signatures.sign_stripe(STRIPE_SECRET, STRIPE_TIMESTAMP, body)
        verifier = signatures.scheme("stripe", [STRIPE_SECRET])
        with pytest.raises(signatures.MalformedDeliveryError):
            verifier.verify(stripe_headers(header), body, now=STRIPE_TIMESTAMP)


class TestSchemes:
    def test_an_unknown_scheme_is_a_config_error(self) -> None:
        """Only standard, github and stripe exist."""
        with pytest.raises(errors.ConfigError):
            signatures.scheme("svix", [STD_SECRET])

    def test_a_scheme_without_secrets_is_a_config_error(self) -> None:
        """A verifier needs at least one secret."""
        with pytest.raises(errors.ConfigError):
            signatures.scheme("github", [])

    def test_errors_carry_their_http_status(self) -> None:
        """Malformed deliveries answer 400, unverified ones 401."""
        assert signatures.MalformedDeliveryError.http_status == 400
        assert signatures.SignatureError.http_status == 401


def source(**overrides: object) -> settings.Source:
    """A valid Standard Webhooks source; keyword overrides replace any field."""
    values: dict[str, object] = {
        "tenant": "default",
        "name": "billing",
        "secrets": [STD_SECRET],
        "workflow": "billing.event",
    }
    values.update(overrides)
    return settings.Source.model_validate(values)


class TestSourceSettings:
    def test_defaults(self) -> None:
        """A source defaults to Standard Webhooks, a 1 MiB body limit and a rate limit."""
        built = source()
        assert (built.scheme, built.max_body_bytes) == ("standard", 1024 * 1024)
        assert built.rate_limit_per_minute >= 1

    def test_a_secret_unfit_for_the_scheme_is_refused(self) -> None:
        """A Standard Webhooks source whose secret is not base64 fails validation."""
        with pytest.raises(pydantic.ValidationError, match="base64"):
            source(secrets=["whsec_not base64!"])

    def test_a_source_needs_a_secret(self) -> None:
        """An empty secrets list fails validation."""
        with pytest.raises(pydantic.ValidationError):
            source(secrets=[])

    def test_an_unknown_key_is_refused(self) -> None:
        """A misspelt key is an error, not ignored."""
        with pytest.raises(pydantic.ValidationError, match="extra"):
            source(secret=STD_SECRET)

    def test_secrets_are_redacted_when_dumped(self) -> None:
        """A dump of the settings never shows a secret."""
        dumped = json.dumps(settings.IngressSettings(sources=(source(),)).model_dump(mode="json"))
        assert "MfKQ9r8" not in dumped

    def test_a_source_is_configured_once_per_tenant(self) -> None:
        """Two sources with the same tenant and name fail validation."""
        with pytest.raises(pydantic.ValidationError, match="twice"):
            settings.IngressSettings(sources=(source(), source(workflow="other")))

    def test_settings_are_frozen(self) -> None:
        """A source cannot be changed after loading."""
        with pytest.raises(pydantic.ValidationError):
            source().name = "other"  # type: ignore[misc]
