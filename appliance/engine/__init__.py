"""The durable task engine: workflows, their tasks and steps, checkpoints, leases, retries."""
