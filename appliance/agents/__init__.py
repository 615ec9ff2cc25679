"""Agents: definitions, the model client with prompt caching, costs, the loop (retrieval is
`appliance.retrieval`)."""
