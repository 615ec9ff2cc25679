"""appliance: durable, multi-tenant AI-agent tasks on one box, with Postgres as the only store."""

__version__ = "0.1.0"
