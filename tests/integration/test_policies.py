"""Versioned policy documents in Postgres: apply, get, diff, isolation, audit."""

from __future__ import annotations

import pytest

from appliance import errors, policy
from appliance.db import audit as dbaudit
from appliance.db import policies as dbpolicies
from appliance.db import pool as dbpool

pytestmark = pytest.mark.asyncio(loop_scope="session")

V1 = """
[guardrails]
max_tool_calls_per_task = 20

[[rules]]
name = "large-refunds"
tools = ["refund_*"]
conditions = [{ arg = "amount", op = ">", value = 500 }]
effect = "require_approval"
"""
V2 = V1.replace('effect = "require_approval"', 'effect = "deny"')


async def apply(db: dbpool.Pool, text: str = V1, *, tenant_id: str = "acme") -> tuple[int, bool]:
    """Apply a document as `alice`."""
    return await dbpolicies.apply_policy(db, tenant_id=tenant_id, document_text=text, actor="alice")


class TestApplyPolicy:
    async def test_first_document_is_version_one(self, db: dbpool.Pool) -> None:
        """The first document applied for a tenant becomes version 1."""
        assert await apply(db) == (1, True)

    async def test_same_content_keeps_the_version(self, db: dbpool.Pool) -> None:
        """Applying the same content again adds no version."""
        await apply(db)
        assert await apply(db) == (1, False)

    async def test_same_content_in_json_keeps_the_version(self, db: dbpool.Pool) -> None:
        """The same content written as JSON adds no version either."""
        await apply(db, '{"rules": [{"effect": "deny", "tools": ["rm"]}]}')
        assert await apply(db, '[[rules]]\ntools = ["rm"]\neffect = "deny"\n') == (1, False)

    async def test_changed_content_is_version_two(self, db: dbpool.Pool) -> None:
        """A changed document becomes version 2."""
        await apply(db)
        assert await apply(db, V2) == (2, True)

    async def test_invalid_document_is_rejected(self, db: dbpool.Pool) -> None:
        """An invalid document raises InputError naming the rule and key, and stores nothing."""
        with pytest.raises(errors.InputError, match=r"rules\[0\]\.effect: 'maybe'"):
            await apply(db, '[[rules]]\neffect = "maybe"\n')
        with pytest.raises(errors.NotFoundError):
            await dbpolicies.get_policy(db, tenant_id="acme")

    async def test_each_version_is_audited(self, db: dbpool.Pool) -> None:
        """Each applied version is an audit entry in the tenant's chain; a no-op is not."""
        await apply(db)
        await apply(db)
        await apply(db, V2)
        entries = await dbaudit.list_chain(db, "tenant:acme")
        applied = [e for e in entries if e.action == "policy.applied"]
        assert [(e.actor, e.detail["version"], e.detail["rules"]) for e in applied] == [
            ("alice", 1, 1),
            ("alice", 2, 1),
        ]


class TestGetPolicy:
    async def test_latest_without_a_version(self, db: dbpool.Pool) -> None:
        """Without a version the newest one is returned."""
        await apply(db)
        await apply(db, V2)
        latest = await dbpolicies.get_policy(db, tenant_id="acme")
        assert (latest.version, latest.document.rules[0].effect) == (2, policy.Effect.DENY)

    async def test_by_version(self, db: dbpool.Pool) -> None:
        """A version asked for is returned as it was applied."""
        await apply(db)
        await apply(db, V2)
        first = await dbpolicies.get_policy(db, tenant_id="acme", version=1)
        assert first.document == policy.parse(V1)
        assert first.created_by == "alice"

    async def test_missing_version_is_not_found(self, db: dbpool.Pool) -> None:
        """A version that does not exist raises NotFoundError."""
        await apply(db)
        with pytest.raises(errors.NotFoundError, match="version 9"):
            await dbpolicies.get_policy(db, tenant_id="acme", version=9)

    async def test_stored_policy_decides_with_its_version(self, db: dbpool.Pool) -> None:
        """A decision under a stored policy records the stored version."""
        await apply(db)
        await apply(db, V2)
        stored = await dbpolicies.get_policy(db, tenant_id="acme")
        request = policy.Request(
            tenant="acme",
            agent="support",
            tool="refund_order",
            action_class="financial",
            arguments={"amount": 900},
        )
        decision = policy.evaluate(stored, request)
        assert (decision.effect, decision.policy_version) == (policy.Effect.DENY, 2)


class TestDiffPolicies:
    async def test_diff_names_the_changed_rule(self, db: dbpool.Pool) -> None:
        """The diff of two stored versions names the rule whose effect changed."""
        await apply(db)
        await apply(db, V2)
        first = await dbpolicies.get_policy(db, tenant_id="acme", version=1)
        second = await dbpolicies.get_policy(db, tenant_id="acme", version=2)
        diff = dbpolicies.diff_policies(first, second)
        assert '-rules[0] "large-refunds".effect = require_approval' in diff
        assert '+rules[0] "large-refunds".effect = deny' in diff


class TestTenantIsolation:
    async def test_versions_are_counted_per_tenant(self, db: dbpool.Pool) -> None:
        """Another tenant's first document is its own version 1."""
        await apply(db)
        await apply(db, V2)
        assert await apply(db, V2, tenant_id="globex") == (1, True)

    async def test_one_tenant_cannot_read_another_policy(self, db: dbpool.Pool) -> None:
        """A tenant without a policy finds none, whatever other tenants applied."""
        await apply(db)
        with pytest.raises(errors.NotFoundError, match="globex"):
            await dbpolicies.get_policy(db, tenant_id="globex")

    async def test_unknown_tenant_is_rejected(self, db: dbpool.Pool) -> None:
        """A document for a tenant that does not exist is refused."""
        with pytest.raises(errors.InputError):
            await apply(db, tenant_id="nobody")
