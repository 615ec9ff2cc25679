"""One tool call of an agent, end to end, inside its step `tool:<turn>:<name>`:

    policy      the tenant's newest policy decides (allow, require approval, deny); the
                decision and the version that made it are an audit entry (`tool.decided`)
    approval    require_approval parks the task until people decide (`appliance.approvals`);
                a denial or a timeout goes back to the model as the tool's error
    in doubt    a write whose intent entry has no result entry (the control plane died between
                the two) is not repeated blindly: an idempotent tool runs again with the same
                idempotency key (`tool.retried`); any other goes to a human approval first
    intent      a tool with a side effect commits `tool.intent` (with its idempotency key)
                before the call; if that commit fails, the call is not made
    the call    in the tool's own confined process (`isolation.supervisor`), or in the control
                plane for the appliance's own tools
    result      `tool.result` records the outcome and the (redacted) value; a step resumed
                after that entry returns the recorded value instead of calling again; a
                failure's text and causes are scrubbed of secrets before the checkpoint, the
                audit entry, the log or the model see them

The idempotency key is `task-<id>-step-<position>`: the same on every attempt of the step.
Secrets are scoped to the agent (`agent:<name>` is the workflow of a secret), so one agent's
tools never lease another agent's credentials.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any

from appliance import approvals, errors, leases, policy, redaction, settings
from appliance.agents import tools
from appliance.db import isolation as dbisolation
from appliance.db import policies as dbpolicies
from appliance.db import pool as dbpool
from appliance.isolation import supervisor

log = logging.getLogger(__name__)

MAX_RECORDED_ERROR = 500


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """Where a tool call sits: its task, its step, and the worker that holds the task."""

    tenant_id: str
    task_id: int
    worker: str
    attempt: int
    position: int
    step_key: str
    agent: str
    tool_calls_so_far: int

    @property
    def idempotency_key(self) -> str:
        return f"task-{self.task_id}-step-{self.position}"

    @property
    def workflow(self) -> str:
        """The secrets scope of the call: the agent."""
        return f"agent:{self.agent}"


class Actions:
    """Makes tool calls under the policy, with approvals, audit entries and isolation."""

    def __init__(
        self,
        pool: dbpool.Pool,
        isolation: supervisor.Supervisor | None,
        approval_config: settings.ApprovalSettings,
    ) -> None:
        self._pool = pool
        self.isolation = isolation
        self._approvals = approval_config

    async def call(
        self, step: Step, tool: tools.Tool, arguments: dict[str, Any], services: Any
    ) -> Any:
        """The tool's (redacted) result, or an error the model is told about."""
        shown = redaction.registry.scrub(arguments)
        decision = await self._decide(step, tool, shown)
        if decision.effect == policy.Effect.DENY:
            raise errors.NotAllowedError(f"{_version(decision)} {decision.rule}: {decision.reason}")
        if decision.effect == policy.Effect.REQUIRE_APPROVAL:
            await self._approved(
                step,
                tool,
                shown,
                step_key=step.step_key,
                reason=f"{_version(decision)} {decision.rule}: {decision.reason}",
                decision=decision,
            )
        if tool.writes:
            recorded = await self._recorded(step, tool, shown, decision)
            if recorded is not None:
                return recorded.get("value")
            await self._audit(step, "tool.intent", tool, arguments=shown, decision=decision.rule)
        try:
            value = redaction.registry.scrub(await self._execute(step, tool, arguments, services))
        except Exception as exc:
            # What the model, the checkpoint and the log get: no secret in the text or causes.
            clean = redaction.registry.scrub_error(exc)
            if tool.writes:
                shown = f"{type(exc).__name__}: {clean}"
                message = redaction.registry.clip(shown, MAX_RECORDED_ERROR)
                await self._audit(step, "tool.result", tool, ok=False, error=message)
            if clean is exc:
                raise
            raise clean from None
        if tool.writes:
            await self._audit(step, "tool.result", tool, ok=True, value=value)
        return value

    async def _decide(self, step: Step, tool: tools.Tool, shown: dict[str, Any]) -> policy.Decision:
        try:
            current: policy.Policy | None = await dbpolicies.get_policy(
                self._pool, tenant_id=step.tenant_id
            )
        except errors.NotFoundError:
            current = None
        spent = await dbisolation.get_task_spend(
            self._pool, task_id=step.task_id, tenant_id=step.tenant_id
        )
        decision = policy.evaluate(
            current,
            policy.Request(
                tenant=step.tenant_id,
                agent=step.agent,
                tool=tool.name,
                action_class=tool.action_class,
                arguments=shown,
                tool_calls_so_far=step.tool_calls_so_far,
                spend_so_far=spent,
            ),
        )
        await self._audit(
            step,
            "tool.decided",
            tool,
            effect=str(decision.effect),
            rule=decision.rule,
            reason=decision.reason,
            policy_version=decision.policy_version,
        )
        return decision

    async def _approved(
        self,
        step: Step,
        tool: tools.Tool,
        shown: dict[str, Any],
        *,
        step_key: str,
        reason: str,
        decision: policy.Decision,
    ) -> None:
        """Return when people approved; park the task while they have not decided. A denial
        is the model's to handle, or fails the task when the deciding rule says so."""
        approval = await approvals.request(
            self._pool,
            tenant_id=step.tenant_id,
            task_id=step.task_id,
            step_key=step_key,
            tool=tool.name,
            action_class=tool.action_class,
            arguments=shown,
            reason=reason,
            policy_version=decision.policy_version,
            approvers=decision.approvers or self._approvals.approvers,
            timeout=dt.timedelta(seconds=self._approvals.timeout_seconds),
        )
        approvals.raise_if_pending(approval)
        if approval.state != "approved":
            why = f": {approval.decision_reason}" if approval.decision_reason else ""
            message = f"approval {approval.approval_id} of {tool.name} was {approval.state}{why}"
            if decision.on_denial == "fail_task":
                raise errors.DeniedError(f"{message}; {decision.rule} fails the task")
            raise errors.NotAllowedError(message)

    async def _recorded(
        self, step: Step, tool: tools.Tool, shown: dict[str, Any], decision: policy.Decision
    ) -> dict[str, Any] | None:
        """The result an earlier attempt recorded, or None to make the call (after settling a
        call left in doubt)."""
        entries = await dbisolation.find_tool_entries(
            self._pool, task_id=step.task_id, idempotency_key=step.idempotency_key
        )
        results = [e for e in entries if e.action == "tool.result"]
        if results:
            log.info(
                "task %d: %s already ran (audit seq %d); its recorded result is used",
                step.task_id,
                tool.name,
                results[-1].seq,
                extra={"event": "agents.tool_recorded", "task_id": step.task_id},
            )
            if not results[-1].detail.get("ok"):
                raise errors.StepFailedError(str(results[-1].detail.get("error", "tool failed")))
            return results[-1].detail
        intents = [e for e in entries if e.action == "tool.intent"]
        if not intents:
            return None
        doubt = (
            f"an earlier attempt committed the intent of {tool.name} (audit seq {intents[-1].seq})"
            " but no result: the write may or may not have been made"
        )
        if tool.idempotent:
            await self._audit(step, "tool.retried", tool, reason=doubt)
            return None
        await self._approved(
            step,
            tool,
            shown,
            step_key=f"{step.step_key}#in-doubt",
            reason=f"{doubt}; approve to make the call again, deny to skip it",
            decision=decision,
        )
        return None

    async def _execute(
        self, step: Step, tool: tools.Tool, arguments: dict[str, Any], services: Any
    ) -> Any:
        if not tool.isolated:
            call = tools.Call(step.tenant_id, step.task_id, services, step.idempotency_key)
            return await tool.fn(call, arguments)
        if self.isolation is None:
            raise errors.ConfigError(
                f"tool {tool.name!r} runs isolated, but this daemon has no tool isolation "
                "(it needs the vault: run `appliance init`)"
            )
        binding = leases.Binding(
            tenant_id=step.tenant_id,
            task_id=step.task_id,
            workflow=step.workflow,
            step_key=step.step_key,
            tool=tool.name,
            integrations=tool.integrations,
            worker=step.worker,
            attempt=step.attempt,
        )
        target = supervisor.Target(tool.module, tool.fn.__name__)
        return await self.isolation.run(binding, target, arguments, step.idempotency_key)

    async def _audit(self, step: Step, action: str, tool: tools.Tool, **detail: Any) -> None:
        await dbisolation.append_task_audit(
            self._pool,
            task_id=step.task_id,
            worker=step.worker,
            attempt=step.attempt,
            action=action,
            detail=redaction.registry.scrub(
                {
                    "step": step.step_key,
                    "tool": tool.name,
                    "action_class": tool.action_class,
                    "idempotency_key": step.idempotency_key,
                    **detail,
                }
            ),
        )


def _version(decision: policy.Decision) -> str:
    if decision.policy_version is None:
        return "default policy"
    return f"policy v{decision.policy_version}"
