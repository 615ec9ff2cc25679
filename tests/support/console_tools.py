"""A tool whose calls need a person's approval, for the console's browser flow.

`send_reply` is customer-facing: the default policy asks a person before each call, so an
agent task using it waits for an approval. A daemon imports this module by adding it to
`engine.workflow_modules`.
"""

from __future__ import annotations

from typing import Any

from appliance.agents import tools

SEND_REPLY = "send_reply"


@tools.toolbox.tool(
    SEND_REPLY,
    "Send a reply to the customer (customer-facing: a person approves each one).",
    {
        "type": "object",
        "properties": {"to": {"type": "string"}, "text": {"type": "string"}},
        "required": ["to", "text"],
    },
    action_class="customer_facing",
)
async def send_reply(call: tools.Call, arguments: dict[str, Any]) -> Any:
    """Pretend to send: the reply's length, as a mail service would acknowledge it."""
    return {"sent_to": arguments["to"], "characters": len(arguments["text"])}
