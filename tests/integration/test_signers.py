"""Deliveries signed by the schemes' official libraries are accepted in their normal forms:
`standardwebhooks` and `svix` (with Svix's own header names), `stripe`, and GitHub's
`@octokit/webhooks-methods` run with the machine's node. The npm package is installed at test
time into the repository's ignored `.appliance/test-cache/npm` (once; later runs reuse it)."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import standardwebhooks
import stripe
import svix.webhooks

from appliance import settings
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.ingress import public, webhooks
from tests.integration import test_webhooks as hooks

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
NPM_CACHE = ROOT / ".appliance" / "test-cache" / "npm"
OCTOKIT = "@octokit/webhooks-methods@6.0.0"
KEY = bytes(range(7, 39))  # 32 bytes: base64 needs one `=` of padding
STANDARD_SECRET = "whsec_" + base64.b64encode(KEY).decode()
UNPADDED_SECRET = STANDARD_SECRET.rstrip("=")
GITHUB_SECRET = "octokit's secret ✓"
STRIPE_SECRET = "whsec_stripe_interop_secret"
UNREACHABLE = ("ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "ECONNREFUSED", "ECONNRESET", "ENETUNREACH")


def body_of(n: int) -> str:
    """A JSON event with text beyond ASCII, as the libraries sign it (a str)."""
    return json.dumps({"id": f"evt_{n}", "object": "event", "name": "café ✓", "n": n})


@contextlib.asynccontextmanager
async def serving(db: dbpool.Pool) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """Sources per library on 127.0.0.1: (base URL, session)."""

    def source(name: str, secret: str, scheme: str = "standard") -> dict[str, Any]:
        return {
            "tenant": "default",
            "name": name,
            "scheme": scheme,
            "secrets": [secret],
            "workflow": hooks.WORKFLOW,
        }

    config = settings.IngressSettings(
        enabled=True,
        sources=[
            source("standard", STANDARD_SECRET),
            source("unpadded", UNPADDED_SECRET),
            source("github", GITHUB_SECRET, "github"),
            source("stripe", STRIPE_SECRET, "stripe"),
        ],
    )
    async with hooks.durable_intake(db) as intake:
        listener = await public.listen(
            webhooks.Endpoint(config, intake),
            host="127.0.0.1",
            port=0,
            limits=public.Limits.of(config),
        )
        try:
            async with aiohttp.ClientSession() as session:
                yield f"http://127.0.0.1:{listener.port}/hooks/default", session
        finally:
            await listener.close()


async def post(
    served: tuple[str, aiohttp.ClientSession], source: str, body: str, headers: dict[str, str]
) -> tuple[int, Any]:
    base, session = served
    async with session.post(f"{base}/{source}", data=body.encode(), headers=headers) as answer:
        return answer.status, await answer.json()


async def stored_body(db: dbpool.Pool, task_id: int) -> Any:
    task = await dbtasks.get_task(db, task_id)
    assert task is not None
    return task.input["body"]


class TestStandardWebhooksLibrary:
    @pytest.mark.parametrize("secret", [STANDARD_SECRET, UNPADDED_SECRET])
    @pytest.mark.parametrize("source", ["standard", "unpadded"])
    async def test_its_signed_delivery_is_accepted(
        self, db: dbpool.Pool, secret: str, source: str
    ) -> None:
        """standardwebhooks.Webhook signs, with the padded or unpadded secret, for a source
        configured either way: 202, and the library verifies what it signed."""
        body = body_of(1)
        now = dt.datetime.now(dt.UTC)
        signer = standardwebhooks.Webhook(secret)
        headers = {
            "webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signer.sign("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", now, body),
            "content-type": "application/json",
        }
        signer.verify(body.encode(), headers)
        async with serving(db) as served:
            status, answer = await post(served, source, body, headers)
        assert status == 202, answer
        assert await stored_body(db, answer["task_id"]) == json.loads(body)


class TestSvixLibrary:
    async def test_its_delivery_with_svix_headers_is_accepted(self, db: dbpool.Pool) -> None:
        """svix.webhooks.Webhook signs; the delivery carries svix-id, svix-timestamp and
        svix-signature, as Svix-powered senders send it: 202."""
        body = body_of(2)
        now = dt.datetime.now(dt.UTC)
        signer = svix.webhooks.Webhook(UNPADDED_SECRET)
        headers = {
            "svix-id": "msg_svix_1",
            "svix-timestamp": str(int(now.timestamp())),
            "svix-signature": signer.sign("msg_svix_1", now, body),
        }
        signer.verify(body, headers)
        async with serving(db) as served:
            status, answer = await post(served, "standard", body, headers)
        assert status == 202, answer

    async def test_a_rotation_header_with_two_signatures_is_accepted(self, db: dbpool.Pool) -> None:
        """Svix's `v1,<old> v1,<new>` during a rotation: the one that matches verifies."""
        body = body_of(3)
        now = dt.datetime.now(dt.UTC)
        other = svix.webhooks.Webhook("whsec_" + base64.b64encode(b"x" * 24).decode())
        mine = svix.webhooks.Webhook(STANDARD_SECRET)
        signature = f"{other.sign('msg_r', now, body)} {mine.sign('msg_r', now, body)}"
        headers = {
            "svix-id": "msg_r",
            "svix-timestamp": str(int(now.timestamp())),
            "svix-signature": signature,
        }
        async with serving(db) as served:
            status, answer = await post(served, "standard", body, headers)
        assert status == 202, answer


class TestStripeLibrary:
    async def test_its_signature_header_is_accepted(self, db: dbpool.Pool) -> None:
        """stripe.WebhookSignature.generate_signature_header signs; stripe verifies it; 202."""
        body = body_of(4)
        header = stripe.WebhookSignature.generate_signature_header(body, STRIPE_SECRET)
        stripe.WebhookSignature.verify_header(body, header, STRIPE_SECRET, 300)
        async with serving(db) as served:
            status, answer = await post(served, "stripe", body, {"Stripe-Signature": header})
        assert status == 202, answer
        assert await stored_body(db, answer["task_id"]) == json.loads(body)


def octokit() -> Path:
    """The folder where @octokit/webhooks-methods is installed (installing it if needed)."""
    if (NPM_CACHE / "node_modules" / "@octokit" / "webhooks-methods").is_dir():
        return NPM_CACHE
    npm = shutil.which("npm")
    assert npm is not None, "npm is not installed (the machine's node comes with it)"
    NPM_CACHE.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--prefix", str(NPM_CACHE), "--no-audit", "--no-fund", OCTOKIT],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    if done.returncode != 0:
        if any(code in done.stderr for code in UNREACHABLE):
            pytest.skip(f"the npm registry is unreachable: {done.stderr.strip()[-200:]}")
        raise AssertionError(f"npm install {OCTOKIT} failed:\n{done.stderr}")
    return NPM_CACHE


def octokit_sign(secret: str, payload: str) -> str:
    """`sign(secret, payload)` of @octokit/webhooks-methods, run by node."""
    folder = octokit()
    node = shutil.which("node")
    assert node is not None, "node is not installed"
    script = (
        'import { sign, verify } from "@octokit/webhooks-methods";\n'
        'import { readFileSync } from "node:fs";\n'
        "const [secret, payload] = JSON.parse(readFileSync(0, 'utf8'));\n"
        "const signature = await sign(secret, payload);\n"
        "if (!(await verify(secret, payload, signature))) process.exit(3);\n"
        "process.stdout.write(signature);\n"
    )
    done = subprocess.run(
        [node, "--input-type=module", "-e", script],
        input=json.dumps([secret, payload]),
        capture_output=True,
        text=True,
        cwd=folder,
        timeout=60,
        check=True,
    )
    return done.stdout


class TestOctokitLibrary:
    async def test_its_signature_is_accepted(self, db: dbpool.Pool) -> None:
        """@octokit/webhooks-methods signs (and verifies its own signature); 202."""
        body = body_of(5)
        signature = octokit_sign(GITHUB_SECRET, body)
        assert signature.startswith("sha256=")
        headers = {
            "X-Hub-Signature-256": signature,
            "X-GitHub-Delivery": "5c2a1b30-d1f1-11ee-8f8e-0e1234567890",
            "X-GitHub-Event": "issues",
        }
        async with serving(db) as served:
            status, answer = await post(served, "github", body, headers)
        assert status == 202, answer
        assert await stored_body(db, answer["task_id"]) == json.loads(body)
