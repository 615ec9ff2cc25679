-- name: ping
-- Whether Postgres answers at all.
SELECT 1;

-- name: count_pending_work
-- Tasks that are ready or running (the daemon's --until-idle waits for none).
SELECT count(*) FROM appliance.tasks
 WHERE state = 'running' OR (state = 'queued' AND run_after <= now());
