"""The durable agent loop: the workflow `agent.run`.

Input: `{"agent": NAME, "prompt": TEXT, "version": N (optional)}`. Steps, each checkpointed:

    agent           the definition version that runs this task (recorded in the task)
    retrieve        the agent's documents for this task: the context chosen for it
                    (`agents.context_choice`: the passages the prompt needs, within the
                    agent's token budget, or the whole collection in the cached system
                    prompt) and the passages themselves
    model:<turn>    one model call: budget check, the call, its ledger row; the whole reply is
                    the checkpoint, so a resumed task never pays for a reply twice
    tool:<turn>:<name>  one tool call (`actions`: policy, approval, audit entries before and
                    after, the call in its own confined process); a refusal or a tool error
                    goes back to the model as an error result

The loop ends on a reply that asks for no tool, at the agent's max_turns, or at a budget: a call
whose worst case (input estimate plus max_tokens) could exceed the tenant's month budget or the
task's budget is not made; the task waits (`budget:...`) until the budget is raised.

What another attempt cannot fix fails the task at once (permanent errors, errors.py): an input
without its agent or prompt, an agent nobody defined (UnknownAgentError), a definition naming a
tool nobody registered (UnknownToolError). A tool's own failure goes to the model; the engine's
signals and errors (a cancel, a shutdown, a lost lease, Postgres gone, a wait) never do.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from decimal import Decimal
from typing import Any

import pydantic

from appliance import errors, settings
from appliance.agents import actions, client, context_choice, costs, definitions, prompt, tools
from appliance.db import agents as dbagents
from appliance.db import pool as dbpool
from appliance.engine import context, registry
from appliance.retrieval import search

log = logging.getLogger(__name__)

WORKFLOW = "agent.run"
SERVICE = "agents"


@dataclasses.dataclass(frozen=True)
class Runtime:
    """What agent steps need from the daemon, handed to workflows as ctx.services['agents']."""

    pool: dbpool.Pool
    model: client.ModelClient
    config: settings.ModelSettings
    tool_actions: actions.Actions | None = None
    toolbox: tools.Toolbox = tools.toolbox

    async def resolve(self, tenant_id: str, name: str, version: int | None) -> dict[str, Any]:
        try:
            agent = await dbagents.get_agent(
                self.pool, tenant_id=tenant_id, name=name, version=version
            )
        except errors.NotFoundError as exc:
            raise errors.UnknownAgentError(str(exc)) from exc
        return {
            "name": agent.name,
            "version": agent.version,
            "persona": agent.persona,
            "model": agent.model,
            "tools": list(agent.tools),
            "max_tokens": agent.max_tokens,
            "max_turns": agent.max_turns,
            "retrieval": agent.retrieval,
        }

    async def retrieve(self, tenant_id: str, spec: dict[str, Any], text: str) -> dict[str, Any]:
        """The context chosen for the task and its passages: those the prompt needs, or every
        passage of the collections (`agents.context_choice`)."""
        settings_ = definitions.Retrieval.model_validate(spec["retrieval"])
        if not settings_.collections:
            return {"context": None, "passages": []}
        tools_ = self.toolbox.definitions(tuple(spec["tools"]))
        choice = await context_choice.decide(
            self.pool,
            tenant_id=tenant_id,
            agent=spec["name"],
            model=spec["model"],
            collections=settings_.collections,
            budget_tokens=settings_.token_budget,
            prefix_tokens=prompt.stable_prefix_tokens(spec["persona"], tools_),
            min_cacheable=prompt.min_cacheable(spec["model"]),
            ttl=self.config.cache_ttl,
            preference=settings_.context,
        )
        if choice.mode == "collection":
            found = await search.collection_passages(
                self.pool, tenant_id=tenant_id, collections=settings_.collections
            )
        else:
            found = await search.retrieve(
                self.pool,
                tenant_id=tenant_id,
                collections=list(settings_.collections),
                query=text,
                top_k=settings_.top_k,
                token_budget=settings_.token_budget,
            )
        log.info(
            "%s",
            choice.note,
            extra={"event": "agents.context", "agent": spec["name"], "mode": choice.mode},
        )
        return {
            "context": {
                "mode": choice.mode,
                "tokens": sum(search.cost_of(passage) for passage in found),
                "expected_usd": str(choice.expected_usd),
                "other_usd": str(choice.other_usd),
            },
            "passages": [dataclasses.asdict(passage) for passage in found],
        }

    async def call_model(  # noqa: PLR0917 - ctx.step passes a step's arguments by position
        self,
        task_id: int,
        tenant_id: str,
        position: int,
        spec: dict[str, Any],
        messages: list[dict[str, Any]],
        documents: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Check the budget against the call's worst case, call, record the ledger row.
        `documents` is the `retrieve` step's output: its whole collection goes in the cached
        system prompt when that is the context chosen, and the choice goes in the ledger."""
        chosen, passages = _documents(documents)
        request = prompt.build(
            model=spec["model"],
            persona=spec["persona"],
            tools=self.toolbox.definitions(tuple(spec["tools"])),
            messages=messages,
            max_tokens=spec["max_tokens"],
            ttl=self.config.cache_ttl,
            documents=(
                search.render_context(passages)
                if chosen is not None and chosen["mode"] == "collection"
                else ""
            ),
        )
        prices = await costs.price_of(self.pool, model=spec["model"], at=dt.datetime.now(dt.UTC))
        worst = costs.worst_case_usd(prices, request.input_estimate, spec["max_tokens"])
        verdict = await costs.check_budget(
            self.pool, tenant_id=tenant_id, task_id=task_id, worst_case_usd=worst
        )
        if not verdict.ok:
            raise errors.BudgetExceededError(verdict.reason)
        if request.prefix_tokens < prompt.min_cacheable(spec["model"]):
            log.warning(
                "%s",
                request.cache_note,
                extra={"event": "agents.not_cacheable", "task_id": task_id},
            )
        reply = await self.model.create(request.params)
        usage = costs.Usage.from_api(reply.message.get("usage") or {})
        await costs.record_call(
            self.pool,
            tenant_id=tenant_id,
            task_id=task_id,
            position=position,
            agent=spec["name"],
            agent_version=spec["version"],
            model=spec["model"],
            request_id=reply.request_id,
            latency_ms=reply.latency_ms,
            usage=usage,
            cache_note=request.cache_note,
            context=(
                None
                if chosen is None
                else costs.ContextCost(
                    mode=chosen["mode"],
                    tokens=chosen["tokens"],
                    expected_usd=Decimal(chosen["expected_usd"]),
                    other_usd=Decimal(chosen["other_usd"]),
                )
            ),
        )
        return {
            "content": reply.message.get("content", []),
            "stop_reason": reply.message.get("stop_reason"),
            "usage": reply.message.get("usage"),
            "request_id": reply.request_id,
        }

    async def call_tool(
        self, step: actions.Step, spec: dict[str, Any], block: dict[str, Any]
    ) -> Any:
        if block["name"] not in spec["tools"]:
            raise errors.NotAllowedError(
                f"agent {spec['name']} may not call tool {block['name']!r}"
            )
        if self.tool_actions is None:
            raise errors.ConfigError("the agent runtime was built without tool actions")
        tool = self.toolbox.get(block["name"])
        return await self.tool_actions.call(step, tool, dict(block.get("input") or {}), self)


# Raised from a tool's step but not the tool's failure: they end the attempt instead of going
# to the model (engine signals are BaseExceptions, which `except Exception` never catches).
_NOT_THE_TOOLS = (
    errors.WaitError,
    errors.DeniedError,
    errors.NonDeterminismError,
    errors.LeaseLostError,
    errors.ChainContentionError,
    errors.DatabaseUnavailableError,
)


def _checked(task_input: Any) -> tuple[str, str, int | None]:
    """The agent's name, the prompt and the version asked for, or a (permanent) InputError."""
    usage = 'agent.run needs {"agent": NAME, "prompt": TEXT} (and optionally "version": N)'
    if not isinstance(task_input, dict) or "agent" not in task_input or "prompt" not in task_input:
        raise errors.InputError(usage)
    name, text, version = task_input["agent"], task_input["prompt"], task_input.get("version")
    if not isinstance(name, str) or not name:
        raise errors.InputError(f"{usage}: agent must be a name, not {name!r}"[:300])
    if not isinstance(text, str):
        raise errors.InputError(f"{usage}: prompt must be text, not {type(text).__name__}")
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version < 1
    ):
        raise errors.InputError(f"{usage}: version must be a positive integer, not {version!r}")
    return name, text, version


def _runtime(ctx: context.TaskContext) -> Runtime:
    return ctx.service(
        SERVICE,
        Runtime,
        "agent tasks need the agent runtime: set model.api_key so the daemon starts it",
    )


def _documents(
    retrieved: dict[str, Any] | list[dict[str, Any]] | None,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The context chosen and the passages of a `retrieve` step's output (a task checkpointed
    before the choice existed holds the retrieved passages alone)."""
    if retrieved is None:
        return None, []
    if isinstance(retrieved, list):
        return None, retrieved
    return retrieved["context"], retrieved["passages"]


def _first_message(text: str, passages: list[dict[str, Any]]) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = []
    if passages:
        blocks.append({"type": "text", "text": search.render_context(passages)})
    blocks.append({"type": "text", "text": text})
    return {"role": "user", "content": blocks}


def _text_of(content: list[dict[str, Any]]) -> str:
    return "\n".join(b.get("text", "") for b in content if b.get("type") == "text").strip()


class AgentInput(pydantic.BaseModel):
    """The input of `agent.run`, checked by `appliance task submit` before the task is stored."""

    model_config = pydantic.ConfigDict(extra="forbid")

    agent: str = pydantic.Field(min_length=1)
    prompt: str = pydantic.Field(min_length=1)
    version: int | None = pydantic.Field(default=None, ge=1)


@registry.workflow(WORKFLOW, input_model=AgentInput)
async def run_agent(ctx: context.TaskContext, task_input: Any) -> Any:
    """Prompt → (model call → tool calls)* → answer, every call a checkpointed step."""
    name, text, version = _checked(task_input)
    runtime = _runtime(ctx)
    spec = await ctx.step("agent", runtime.resolve, ctx.tenant_id, name, version)
    retrieved = await ctx.step("retrieve", runtime.retrieve, ctx.tenant_id, spec, text)
    chosen, passages = _documents(retrieved)
    in_prompt = chosen is not None and chosen["mode"] == "collection"
    messages: list[dict[str, Any]] = [_first_message(text, [] if in_prompt else passages)]
    usage_total: dict[str, int] = {}
    tool_calls = 0
    for turn in range(spec["max_turns"]):
        reply = await ctx.step(
            f"model:{turn}",
            runtime.call_model,
            ctx.task_id,
            ctx.tenant_id,
            ctx.next_position,
            spec,
            messages,
            retrieved,
        )
        for key, value in (reply.get("usage") or {}).items():
            if isinstance(value, int):
                usage_total[key] = usage_total.get(key, 0) + value
        messages.append({"role": "assistant", "content": reply["content"]})
        uses = [b for b in reply["content"] if b.get("type") == "tool_use"]
        if reply["stop_reason"] != "tool_use" or not uses:
            return {
                "status": "done",
                "agent": spec["name"],
                "agent_version": spec["version"],
                "answer": _text_of(reply["content"]),
                "stop_reason": reply["stop_reason"],
                "turns": turn + 1,
                "sources": sorted({p["source"] for p in passages}),
                "usage": usage_total,
            }
        results = []
        for block in uses:
            step = actions.Step(
                tenant_id=ctx.tenant_id,
                task_id=ctx.task_id,
                worker=ctx.worker_id,
                attempt=ctx.attempt,
                position=ctx.next_position,
                step_key=f"tool:{turn}:{block['name']}",
                agent=spec["name"],
                tool_calls_so_far=tool_calls,
            )
            tool_calls += 1
            try:
                result = await ctx.step(step.step_key, runtime.call_tool, step, spec, block)
                results.append(
                    {
                        "type": "tool_result",
                        "tool_use_id": block["id"],
                        "content": json.dumps(result),
                    }
                )
            except _NOT_THE_TOOLS:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed tool is the model's to handle
                results.append(
                    {
                        "type": "tool_result",
                        "tool_use_id": block["id"],
                        "content": f"{type(exc).__name__}: {exc}",
                        "is_error": True,
                    }
                )
        messages.append({"role": "user", "content": results})
    return {
        "status": "max_turns",
        "agent": spec["name"],
        "agent_version": spec["version"],
        "answer": _text_of(messages[-2]["content"]) if len(messages) > 1 else "",
        "turns": spec["max_turns"],
        "sources": sorted({p["source"] for p in passages}),
        "usage": usage_total,
    }
