"""The workflow `example.escalate`: a customer's message becomes a ticket, in three steps.

    triage        severity and title from the message, and when it was received
    open_ticket   the tool's function, run as an isolated step: its own confined process,
                  the tracker's secrets leased in the workflow's scope
    comment       a first comment on the ticket saying which task escalated it

Each step's result is its checkpoint. A task that fails or is killed after `open_ticket`
resumes at `comment` with the ticket it already has: the tracker sees one ticket. The code
between steps only combines checkpoints, so a replay takes the same path; the clock is read
inside `triage`, never outside a step. Input: `{"customer": ..., "message": ...}`.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pydantic

from appliance.engine import context, registry
from appliance.isolation import steps
from appliance_example import tools, tracker

WORKFLOW = "example.escalate"
URGENT = frozenset({"outage", "down", "urgent", "security", "breach", "lost", "data"})
TITLE_WORDS = 12


class EscalationInput(pydantic.BaseModel):
    """Who wrote, and what."""

    model_config = pydantic.ConfigDict(extra="forbid")

    customer: str = pydantic.Field(min_length=1, max_length=200)
    message: str = pydantic.Field(min_length=1, max_length=20_000)


def triage(customer: str, message: str) -> dict[str, Any]:
    """How urgent the message is, a title for it, and when it was received."""
    words = re.findall(r"\w+", message.lower())
    title = " ".join(message.split()[:TITLE_WORDS])
    return {
        "severity": "high" if URGENT.intersection(words) else "normal",
        "title": f"{customer}: {title}"[: tools.MAX_TITLE],
        "received_at": dt.datetime.now(dt.UTC).isoformat(),
    }


@registry.workflow(WORKFLOW, input_model=EscalationInput, integration=tracker.INTEGRATION)
async def escalate(ctx: context.TaskContext, task_input: Any) -> Any:
    """triage → open_ticket → comment."""
    registry.registry.get(WORKFLOW).check_input(task_input)  # bad input fails at once
    request = EscalationInput.model_validate(task_input)
    triaged = await ctx.step("triage", triage, request.customer, request.message)
    ticket = await steps.run(
        ctx,
        "open_ticket",
        tools.open_ticket,
        {"title": triaged["title"], "body": request.message, "severity": triaged["severity"]},
        integrations=(tracker.INTEGRATION,),
    )
    await steps.run(
        ctx,
        "comment",
        tracker.add_comment,
        {
            "ticket": ticket["id"],
            "text": f"Escalated by task {ctx.task_id}; received {triaged['received_at']}.",
        },
        integrations=(tracker.INTEGRATION,),
    )
    return {"ticket": ticket["id"], "url": ticket["url"], "severity": triaged["severity"]}
