"""A task's timeline: spans on one scale from the task's creation, lost and resumed attempts."""

from __future__ import annotations

import datetime as dt
from typing import Any

from appliance.console import details, services
from appliance.console.pages import charts, timeline

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
NOW = T0 + dt.timedelta(seconds=10)


def at(ms: float) -> dt.datetime:
    return T0 + dt.timedelta(milliseconds=ms)


def task(**overrides: Any) -> services.TaskDetail:
    values: dict[str, Any] = {
        "task_id": 7,
        "tenant_id": "acme",
        "workflow": "agent.run",
        "state": "succeeded",
        "wait_reason": None,
        "priority": 0,
        "run_after": T0,
        "attempts": 2,
        "max_attempts": 3,
        "crashes": 1,
        "lease_node": None,
        "cancel_requested_by": None,
        "replay_of": None,
        "replay_from": None,
        "error": None,
        "created_at": T0,
        "started_at": at(5),
        "finished_at": at(900),
        "updated_at": at(900),
        "input": {"agent": "support", "prompt": "hi"},
        "output": "done",
        "steps": [
            services.StepView(
                position=0,
                name="agent",
                attempt=1,
                started_at=at(10),
                duration_ms=2,
                output=1,
                error=None,
            ),
            services.StepView(
                position=1,
                name="model:0",
                attempt=2,
                started_at=at(600),
                duration_ms=250,
                output=2,
                error=None,
            ),
        ],
        "attempt_history": [
            services.AttemptView(
                attempt=1,
                node="n1",
                worker="w1",
                started_at=at(5),
                ended_at=at(400),
                outcome="lease_expired",
                error=None,
            ),
            services.AttemptView(
                attempt=2,
                node="n2",
                worker="w2",
                started_at=at(500),
                ended_at=at(900),
                outcome="succeeded",
                error=None,
            ),
        ],
    }
    values.update(overrides)
    return services.TaskDetail(**values)


def entry(action: str, ms: float, **detail: Any) -> services.AuditEntryView:
    return services.AuditEntryView(
        chain="task:7",
        seq=1,
        tenant_id="acme",
        task_id=7,
        actor="hook:shop",
        action=action,
        detail=detail,
        created_at=at(ms),
        hash="00",
    )


def trace(**overrides: Any) -> details.TaskTrace:
    values: dict[str, Any] = {
        "model_calls": [
            details.ModelCallView(
                position=1,
                model="claude-sonnet-4-6",
                started_at=at(610),
                latency_ms=230,
                input_tokens=10,
                cache_creation_input_tokens=0,
                cache_read_input_tokens=90,
                output_tokens=5,
                cost_usd="0.000123",
                uncached_cost_usd="0.000400",
            )
        ],
        "leases": [],
        "delivery": None,
        "chain": details.ChainView(entries=3, verified=True, broken_seq=None, reason=None),
    }
    values.update(overrides)
    return details.TaskTrace(**values)


class TestSpans:
    def test_a_lost_attempt_is_marked_and_the_next_resumes_at_its_checkpoints(self) -> None:
        """Attempt 1 lost its lease; attempt 2 started from the one checkpoint before it."""
        found = timeline.spans(task(), [], [], trace(), now=NOW)

        attempts = [s for s in found if s.kind == "attempt"]
        assert [(s.attempt, s.mark, s.resumed_from) for s in attempts] == [
            (1, "lost", 0),
            (2, "", 1),
        ]
        assert "not charged" in attempts[0].detail
        assert attempts[1].label == "dispatch + lease: attempt 2/3 on n2"

    def test_each_span_has_its_offset_and_duration_in_ms_from_creation(self) -> None:
        """Steps and model calls keep their own start and length on the task's scale."""
        found = timeline.spans(task(), [], [], trace(), now=NOW)

        by_label = {s.label: (s.start_ms, s.duration_ms) for s in found}
        assert by_label["checkpoint 1: model:0"] == (600.0, 250.0)
        assert by_label["model call claude-sonnet-4-6: $0.000123"] == (610.0, 230.0)
        assert [s.start_ms for s in found] == sorted(s.start_ms for s in found)

    def test_a_webhook_task_names_its_source_and_scheme(self) -> None:
        """A delivery gives the ingress span its source and the scheme that verified it."""
        delivery = details.DeliveryView(
            source="shop", scheme="stripe", delivery_id="evt_1", received_at=T0
        )

        [ingress] = [
            s
            for s in timeline.spans(task(), [], [], trace(delivery=delivery), now=NOW)
            if s.kind == "ingress"
        ]

        assert ingress.label == "ingress: webhook shop"
        assert "verified by stripe" in ingress.detail

    def test_a_policy_decision_shows_its_rule_and_version(self) -> None:
        """tool.decided is a policy.eval instant naming effect, rule and policy version."""
        decided = entry(
            "tool.decided",
            620,
            tool="refund",
            effect="require_approval",
            rule='rules[0] "refunds"',
            reason="money",
            policy_version=4,
        )

        [policy] = [
            s for s in timeline.spans(task(), [decided], [], trace(), now=NOW) if s.kind == "policy"
        ]

        assert policy.label == "policy.eval refund: require_approval"
        assert 'rule rules[0] "refunds", policy version 4' in policy.detail
        assert policy.duration_ms == 0.0


class TestDrawing:
    def test_bars_share_one_scale_and_resumes_are_marked(self) -> None:
        """A longer span is drawn wider on the same scale; the resumed attempt gets a marker."""
        drawing = timeline.draw(timeline.spans(task(), [], [], trace(), now=NOW))

        widths = {b.span.label: b.width for b in drawing.bars}
        assert widths["checkpoint 1: model:0"] > widths["model call claude-sonnet-4-6: $0.000123"]
        assert [r.label for r in drawing.resumes] == ["attempt 2 resumed at checkpoint 1"]
        assert drawing.ticks[0].label == "0 ms"
        assert all(b.x + b.width <= drawing.width for b in drawing.bars)

    def test_chart_steps_are_round(self) -> None:
        """Axis steps are 1, 2, 2.5 or 5 times a power of ten."""
        assert [charts.nice_step(v) for v in (0.7, 1.3, 2.2, 4, 9, 130)] == [
            1.0,
            2.0,
            2.5,
            5.0,
            10.0,
            200.0,
        ]
