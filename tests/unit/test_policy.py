"""The policy evaluator: defaults, precedence, conditions, guardrails, document validation."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

import pytest

from appliance import errors, policy

Effect = policy.Effect


def make_policy(text: str = "", *, tenant_id: str = "acme", version: int = 3) -> policy.Policy:
    """A stored policy as `appliance.db.policies` would build it."""
    document = policy.parse(text)
    return policy.Policy(
        tenant_id=tenant_id,
        version=version,
        document=document,
        content_hash=document.content_hash(),
        created_by="test",
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )


def call(action_class: str | None = "read", **overrides: Any) -> policy.Request:
    """A tool call of agent `support` of tenant `acme`, with keyword overrides."""
    fields: dict[str, Any] = {
        "tenant": "acme",
        "agent": "support",
        "tool": "lookup_order",
        "action_class": action_class,
    }
    fields.update(overrides)
    return policy.Request(**fields)


def rule(effect: str, *, conditions: str = "", **match: str) -> str:
    """A `[[rules]]` table in TOML."""
    lines = ["[[rules]]", f'effect = "{effect}"']
    lines += [f"{key} = {value}" for key, value in match.items()]
    if conditions:
        lines.append(f"conditions = [{conditions}]")
    return "\n".join(lines) + "\n"


class TestDefaults:
    def test_read_is_allowed(self) -> None:
        """A read call no rule matches is allowed."""
        assert policy.evaluate(make_policy(), call("read")).effect is Effect.ALLOW

    def test_write_is_allowed(self) -> None:
        """A write call no rule matches is allowed (write is the reversible class)."""
        assert policy.evaluate(make_policy(), call("write")).effect is Effect.ALLOW

    @pytest.mark.parametrize("action_class", ["destructive", "financial", "customer_facing"])
    def test_risky_classes_need_approval(self, action_class: str) -> None:
        """Destructive, financial and customer-facing calls need approval by default."""
        decision = policy.evaluate(make_policy(), call(action_class))
        assert (decision.effect, decision.rule) == (Effect.REQUIRE_APPROVAL, "default")

    def test_unknown_tool_is_denied(self) -> None:
        """A tool without an action class is denied."""
        decision = policy.evaluate(make_policy(), call(None, tool="mystery"))
        assert decision.effect is Effect.DENY
        assert "unknown tool 'mystery'" in decision.reason

    def test_unknown_class_is_denied(self) -> None:
        """An action class outside the five is denied."""
        decision = policy.evaluate(make_policy(), call("telepathic"))
        assert decision.effect is Effect.DENY
        assert "unknown action class 'telepathic'" in decision.reason

    def test_rules_cannot_allow_an_unknown_tool(self) -> None:
        """An allow rule naming an unknown tool does not let it through."""
        decision = policy.evaluate(make_policy(rule("allow")), call(None, tool="mystery"))
        assert decision.effect is Effect.DENY

    def test_no_policy_means_the_defaults(self) -> None:
        """Without a stored policy the defaults decide and no version is recorded."""
        decision = policy.evaluate(None, call("financial"))
        assert (decision.effect, decision.policy_version) == (Effect.REQUIRE_APPROVAL, None)


class TestPrecedence:
    def test_deny_wins_over_allow(self) -> None:
        """A matching deny rule wins over an earlier matching allow rule."""
        text = rule("allow") + rule("deny", name='"no"')
        decision = policy.evaluate(make_policy(text), call("read"))
        assert (decision.effect, decision.rule) == (Effect.DENY, 'rules[1] "no"')

    def test_deny_wins_over_require_approval(self) -> None:
        """A matching deny rule wins over a matching require_approval rule."""
        text = rule("deny") + rule("require_approval")
        assert policy.evaluate(make_policy(text), call("read")).rule == "rules[0]"

    def test_require_approval_wins_over_allow(self) -> None:
        """A matching require_approval rule wins over a matching allow rule."""
        text = rule("allow") + rule("require_approval")
        assert policy.evaluate(make_policy(text), call("read")).effect is Effect.REQUIRE_APPROVAL

    def test_allow_rule_overrides_a_default(self) -> None:
        """An allow rule lifts the approval a class needs by default."""
        text = rule("allow", tools='["refund"]')
        decision = policy.evaluate(make_policy(text), call("financial", tool="refund"))
        assert (decision.effect, decision.rule) == (Effect.ALLOW, "rules[0]")

    def test_first_rule_of_the_winning_effect_is_named(self) -> None:
        """Among rules of the same effect the first matching one is named."""
        text = rule("deny", agents='["other"]') + rule("deny") + rule("deny")
        assert policy.evaluate(make_policy(text), call("read")).rule == "rules[1]"

    def test_rule_of_another_agent_does_not_match(self) -> None:
        """A rule naming other agents leaves the call to the default."""
        text = rule("deny", agents='["billing"]')
        assert policy.evaluate(make_policy(text), call("read")).rule == "default"

    def test_tool_patterns_are_globs(self) -> None:
        """A tool pattern with `*` matches every tool it covers."""
        text = rule("deny", tools='["lookup_*"]')
        assert policy.evaluate(make_policy(text), call("read")).effect is Effect.DENY

    def test_rule_of_another_class_does_not_match(self) -> None:
        """A rule naming other classes leaves the call to the default."""
        text = rule("deny", classes='["destructive"]')
        assert policy.evaluate(make_policy(text), call("read")).effect is Effect.ALLOW

    def test_policy_of_another_tenant_denies(self) -> None:
        """A policy handed a call of another tenant denies it."""
        decision = policy.evaluate(make_policy(tenant_id="globex"), call("read"))
        assert (decision.effect, decision.rule) == (Effect.DENY, "tenant")


class TestConditions:
    AMOUNT = '{ arg = "amount", op = ">", value = 500 }'
    DOMAIN = '{ arg = "to", op = "domain_not_in", value = ["example.com"] }'

    @pytest.mark.parametrize(("amount", "effect"), [(501, Effect.DENY), (500, Effect.ALLOW)])
    def test_number_over_a_limit(self, amount: int, effect: Effect) -> None:
        """`amount > 500` matches 501 and not 500."""
        text = rule("deny", conditions=self.AMOUNT) + rule("allow")
        request = call("financial", arguments={"amount": amount})
        assert policy.evaluate(make_policy(text), request).effect is effect

    def test_number_under_a_limit(self) -> None:
        """`amount <= 50` matches a small amount."""
        text = rule("allow", conditions='{ arg = "amount", op = "<=", value = 50 }')
        request = call("financial", arguments={"amount": 12.5})
        assert policy.evaluate(make_policy(text), request).effect is Effect.ALLOW

    @pytest.mark.parametrize(
        ("to", "effect"),
        [
            ("ann@partner.org", Effect.REQUIRE_APPROVAL),
            ("Ann <ann@EXAMPLE.com>", Effect.ALLOW),
            ("bob@mail.example.com", Effect.ALLOW),
            ("eve@badexample.com", Effect.REQUIRE_APPROVAL),
        ],
    )
    def test_domain_outside_a_list(self, to: str, effect: Effect) -> None:
        """`domain_not_in` matches a recipient outside the domains and their subdomains."""
        text = rule("require_approval", conditions=self.DOMAIN) + rule("allow")
        request = call("customer_facing", arguments={"to": to})
        assert policy.evaluate(make_policy(text), request).effect is effect

    def test_domain_of_a_url(self) -> None:
        """`domain_in` takes the host of a URL."""
        text = rule("deny", conditions='{ arg = "url", op = "domain_in", value = ["evil.test"] }')
        request = call("write", arguments={"url": "https://api.evil.test/upload"})
        assert policy.evaluate(make_policy(text), request).effect is Effect.DENY

    @pytest.mark.parametrize(("region", "effect"), [("eu", Effect.DENY), ("us", Effect.ALLOW)])
    def test_equality(self, region: str, effect: Effect) -> None:
        """`==` matches an equal string only."""
        text = rule("deny", conditions='{ arg = "region", op = "==", value = "eu" }')
        request = call("write", arguments={"region": region})
        assert policy.evaluate(make_policy(text), request).effect is effect

    def test_bool_never_equals_a_number(self) -> None:
        """`== 1` does not match `true`."""
        text = rule("deny", conditions='{ arg = "force", op = "==", value = 1 }')
        request = call("write", arguments={"force": True})
        assert policy.evaluate(make_policy(text), request).effect is Effect.ALLOW

    def test_nested_argument(self) -> None:
        """A dotted `arg` reaches into nested objects."""
        text = rule("deny", conditions='{ arg = "payment.amount", op = ">=", value = 10 }')
        request = call("financial", arguments={"payment": {"amount": 10}})
        assert policy.evaluate(make_policy(text), request).effect is Effect.DENY

    def test_all_conditions_must_hold(self) -> None:
        """A rule with two conditions does not match when one of them fails."""
        both = f'{self.AMOUNT}, {{ arg = "currency", op = "==", value = "EUR" }}'
        text = rule("deny", conditions=both)
        request = call("financial", arguments={"amount": 900, "currency": "USD"})
        assert policy.evaluate(make_policy(text), request).rule == "default"

    def test_missing_argument_matches_a_deny_rule(self) -> None:
        """A condition on a missing argument fails closed: the deny rule matches."""
        text = rule("deny", conditions=self.AMOUNT)
        request = call("financial", arguments={})
        assert policy.evaluate(make_policy(text), request).effect is Effect.DENY

    def test_wrong_type_does_not_match_an_allow_rule(self) -> None:
        """A condition on an argument of the wrong type never loosens: the allow rule is skipped."""
        text = rule("allow", conditions='{ arg = "amount", op = "<", value = 50 }')
        request = call("financial", arguments={"amount": "10"})
        assert policy.evaluate(make_policy(text), request).effect is Effect.REQUIRE_APPROVAL


class TestGuardrails:
    GUARDRAILS = '[guardrails]\nmax_tool_calls_per_task = 3\nmax_spend_usd_per_task = "2.50"\n'

    def test_calls_within_the_limit_are_decided_by_rules(self) -> None:
        """The third call of a task with a limit of three goes on to the rules."""
        request = call("read", tool_calls_so_far=2)
        assert policy.evaluate(make_policy(self.GUARDRAILS), request).effect is Effect.ALLOW

    def test_too_many_calls_are_denied(self) -> None:
        """The fourth call of a task with a limit of three is denied, with the reason."""
        text = self.GUARDRAILS + rule("allow")
        decision = policy.evaluate(make_policy(text), call("read", tool_calls_so_far=3))
        assert (decision.effect, decision.rule) == (
            Effect.DENY,
            "guardrails.max_tool_calls_per_task",
        )
        assert "3 tool calls, the limit is 3" in decision.reason

    def test_spend_at_the_limit_is_denied(self) -> None:
        """A task that has spent its limit is denied further calls, with the reason."""
        request = call("read", spend_so_far=decimal.Decimal("2.50"))
        decision = policy.evaluate(make_policy(self.GUARDRAILS), request)
        assert (decision.effect, decision.rule) == (
            Effect.DENY,
            "guardrails.max_spend_usd_per_task",
        )
        assert "$2.50" in decision.reason

    def test_spend_under_the_limit_goes_on(self) -> None:
        """A task under its spend limit goes on to the rules."""
        request = call("read", spend_so_far=decimal.Decimal("2.49"))
        assert policy.evaluate(make_policy(self.GUARDRAILS), request).effect is Effect.ALLOW


class TestDecision:
    def test_records_the_policy_version(self) -> None:
        """A decision names the version of the policy that made it."""
        decision = policy.evaluate(make_policy(rule("deny"), version=7), call("read"))
        assert decision.policy_version == 7

    def test_default_records_the_policy_version(self) -> None:
        """A default decision under a stored policy names its version too."""
        assert policy.evaluate(make_policy(version=2), call("read")).policy_version == 2


class TestDocument:
    def test_json_document(self) -> None:
        """A document whose text starts with `{` is read as JSON."""
        document = policy.parse('{"rules": [{"effect": "deny", "tools": ["rm"]}]}')
        assert document.rules[0].tools == ("rm",)

    def test_same_content_same_hash(self) -> None:
        """The same document written as TOML and as JSON hashes the same."""
        toml = policy.parse(rule("deny", tools='["rm"]'))
        json_ = policy.parse('{"rules": [{"tools": ["rm"], "effect": "deny"}]}')
        assert toml.content_hash() == json_.content_hash()

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            (rule("deny", colour='"red"'), "rules[0].colour: unknown key"),
            (rule("maybe"), "rules[0].effect: 'maybe' is not known"),
            (rule("deny", classes='["shady"]'), "rules[0].classes[0]: 'shady' is not known"),
            (
                rule("allow") + rule("deny", conditions='{ arg = "n", op = ">", value = "x" }'),
                "rules[1].conditions[0]: '>' needs a number",
            ),
            (
                rule("deny", conditions='{ arg = "n", op = "~", value = 1 }'),
                "rules[0].conditions[0].op",
            ),
            (rule("deny", tools="[]"), "rules[0].tools: an empty list matches nothing"),
            ("[guardrails]\nmax_tool_calls_per_task = -1\n", "guardrails.max_tool_calls_per_task"),
            ("surprise = 1\n", "surprise: unknown key"),
            ("[[rules]\n", "not valid TOML"),
            ("{", "not valid JSON"),
        ],
        ids=[
            "unknown-key",
            "unknown-effect",
            "unknown-class",
            "bad-value",
            "unknown-op",
            "empty-list",
            "negative-limit",
            "top-level-key",
            "toml",
            "json",
        ],
    )
    def test_invalid_documents_are_rejected(self, text: str, message: str) -> None:
        """An invalid document raises InputError naming the rule index, key and reason."""
        with pytest.raises(errors.InputError, match=r"^policy: ") as caught:
            policy.parse(text)
        assert message in caught.value.message

    def test_diff_names_the_changed_rule(self) -> None:
        """The diff of two versions shows the changed line under its rule's name."""
        before = make_policy(rule("allow", name='"refunds"'), version=1)
        after = make_policy(rule("deny", name='"refunds"'), version=2)
        diff = policy.diff_policies(before, after)
        assert '-rules[0] "refunds".effect = allow' in diff
        assert '+rules[0] "refunds".effect = deny' in diff
        assert "acme policy v1" in diff


class TestApprovalRules:
    def test_a_rule_carries_its_approvers_and_what_a_denial_does(self) -> None:
        """approvers and on_denial of the deciding rule reach the decision."""
        document = (
            '[[rules]]\ntools = ["lookup_order"]\neffect = "require_approval"\n'
            'approvers = 2\non_denial = "fail_task"\n'
        )
        decision = policy.evaluate(make_policy(document), call())

        assert (decision.effect, decision.approvers, decision.on_denial) == (
            policy.Effect.REQUIRE_APPROVAL,
            2,
            "fail_task",
        )

    def test_a_default_decision_tells_the_agent(self) -> None:
        """Without a rule, the configured approvers apply and a denial goes to the model."""
        decision = policy.evaluate(None, call("financial"))

        assert (decision.approvers, decision.on_denial) == (None, "tell_agent")

    def test_approval_fields_on_another_effect_are_refused(self) -> None:
        """approvers on an allow rule is a mistake the parser names."""
        with pytest.raises(errors.InputError, match="apply to effect = require_approval only"):
            policy.parse('[[rules]]\neffect = "allow"\napprovers = 2\n')
