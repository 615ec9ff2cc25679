"""An example plugin of the appliance: a help desk that files tickets in an issue tracker.

- `tools`: the tool `open_ticket` an agent may call (action class `write`: the policy decides);
- `workflows`: the workflow `example.escalate` (triage, open a ticket, comment on it);
- `tracker`: the tracker's HTTP API, called with secrets leased from the vault.

The appliance imports `tools` and `workflows` through this distribution's entry points.
"""
