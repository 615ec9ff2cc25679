"""Agents: definitions, the model client with prompt caching, retrieval, costs, the loop."""
