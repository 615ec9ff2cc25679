-- name: record_delivery
-- Remember that delivery $3 of tenant $1's source $2 enqueued task $4 (in the task's transaction).
INSERT INTO appliance.webhook_deliveries (tenant_id, source, delivery_id, task_id)
VALUES ($1, $2, $3, $4);

-- name: find_delivery
-- The task that delivery $3 of tenant $1's source $2 enqueued (no row: none did).
SELECT task_id FROM appliance.webhook_deliveries
 WHERE tenant_id = $1 AND source = $2 AND delivery_id = $3;

-- name: record_body
-- Remember body key $3 (see db/ingress.py) of tenant $1's source $2 as task $4's; no row: recorded before.
INSERT INTO appliance.webhook_deliveries (tenant_id, source, delivery_id, task_id)
VALUES ($1, $2, $3, $4)
ON CONFLICT (tenant_id, source, delivery_id) DO NOTHING
RETURNING task_id;
