-- Webhook deliveries the public ingress accepted: one row per delivery id of a tenant's source,
-- written in the transaction that enqueued its task (whose idempotency key is
-- 'hook:<source>:<delivery id>'), so a replayed delivery is answered with its task by any
-- process, after any restart. A row lives as long as its task.

CREATE TABLE appliance.webhook_deliveries (
    tenant_id   text NOT NULL,
    source      text NOT NULL,
    delivery_id text NOT NULL,
    task_id     bigint NOT NULL REFERENCES appliance.tasks ON DELETE CASCADE,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, source, delivery_id)
);
CREATE INDEX webhook_deliveries_task ON appliance.webhook_deliveries (task_id);
