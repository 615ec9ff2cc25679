-- name: insert_exposure_event
-- Emit outbox event $2 (exposure.violation or exposure.resolved), payload $3, in tenant $1's stream.
INSERT INTO appliance.outbox_events (tenant_id, task_id, type, payload)
VALUES ($1, NULL, $2, $3::jsonb);
