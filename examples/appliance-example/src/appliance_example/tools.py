"""The tool `open_ticket`: an agent files a ticket in the help desk's tracker.

Its action class is `write` (it changes something outside, reversibly), so the tenant's policy
decides each call: allowed by default, or sent to a person for approval by a rule such as
`tools = ["open_ticket"], effect = "require_approval"`. It may lease only the secrets of the
integration `tracker`, and it is `idempotent`: the tracker honours the call's idempotency key,
so a call left in doubt by a crash is made again with the same key instead of waiting for a
person. It runs in its own confined process, like every tool that is not the appliance's own.
"""

from __future__ import annotations

from typing import Any

from appliance.agents import tools
from appliance_example import tracker

SEVERITIES = ("low", "normal", "high")
MAX_TITLE = 120


@tools.toolbox.tool(
    "open_ticket",
    "Open a ticket in the help desk's issue tracker for a problem you cannot solve yourself. "
    "Returns the ticket's id and address; tell the customer the id.",
    {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": MAX_TITLE, "description": "one line"},
            "body": {"type": "string", "description": "what the customer reported"},
            "severity": {"type": "string", "enum": list(SEVERITIES)},
        },
        "required": ["title", "body", "severity"],
        "additionalProperties": False,
    },
    action_class="write",
    integrations=(tracker.INTEGRATION,),
    idempotent=True,
)
async def open_ticket(call: tools.Call, arguments: dict[str, Any]) -> dict[str, Any]:
    """Open the ticket; `{"id": ..., "url": ...}`."""
    title, body, severity = (arguments.get(key) for key in ("title", "body", "severity"))
    if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE:
        raise ValueError(f"title must be one line of at most {MAX_TITLE} characters")
    if not isinstance(body, str):
        raise TypeError("body must be text")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
    ticket = await tracker.post(
        call, "/tickets", {"title": title.strip(), "body": body, "severity": severity}
    )
    return {"id": ticket["id"], "url": ticket["url"]}
