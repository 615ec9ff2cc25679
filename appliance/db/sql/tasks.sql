-- name: submit_task
-- Insert a task (or find the one with the same idempotency key), with its audit entry and event.
SELECT task_id, created, workflow, input
  FROM appliance.submit_task($1, $2, $3::text::jsonb, $4, $5, $6, $7, $8, $9, $10);

-- name: claim_tasks
-- Lease up to $3 ready tasks to worker $1 on node $2, with their earlier checkpoints.
SELECT task_id, tenant_id, workflow, input, attempts, max_attempts, checkpoints
  FROM appliance.claim_tasks($1, $2, $3, $4, $5, $6);

-- name: record_step
-- Checkpoint one step with its audit entry and event; true when a cancel was requested.
SELECT appliance.record_step($1, $2, $3, $4, $5, $6::text::jsonb, $7, $8);

-- name: finish_task
-- End an attempt (with its pending checkpoint) and claim the next tasks in the same commit.
SELECT task_id, tenant_id, workflow, input, attempts, max_attempts, checkpoints
  FROM appliance.finish_task($1, $2, $3, $4, $5::text::jsonb, $6, $7, $8, $9, $10::text::jsonb,
                             $11, $12, $13, $14, $15, $16, $17);

-- name: requeue_abandoned
-- Requeue the running tasks of node $1, or tasks $2 that worker $3 gave up, or expired ones.
SELECT appliance.requeue_abandoned($1, $2, $3);

-- name: extend_leases
-- Heartbeat: push back the leases of tasks $3 that worker $1 runs; returns those still held.
UPDATE appliance.tasks
   SET lease_expires_at = now() + make_interval(secs => $2)
 WHERE lease_owner = $1 AND state = 'running' AND task_id = ANY ($3::bigint[])
RETURNING task_id;

-- name: next_due_at
-- When the earliest delayed task of these workflows becomes ready.
SELECT min(run_after) FROM appliance.tasks
 WHERE state = 'queued' AND workflow = ANY ($1::text[]);

-- name: cancel_task
-- Cancel a task now, or ask its worker to stop at the next step boundary.
SELECT appliance.cancel_task($1, $2);

-- name: retry_task
-- Put a failed or cancelled task back in the queue; it resumes from its last checkpoint.
SELECT appliance.retry_task($1, $2);

-- name: get_task
-- One task by id.
SELECT task_id, tenant_id, workflow, input, state, wait_reason, priority, run_after, attempts,
       max_attempts, idempotency_key, concurrency_key, lease_node, cancel_requested_by, output,
       error, created_at, started_at, finished_at, updated_at
  FROM appliance.tasks WHERE task_id = $1;

-- name: list_tasks
-- The newest tasks, optionally of one tenant and one state.
SELECT task_id, tenant_id, workflow, input, state, wait_reason, priority, run_after, attempts,
       max_attempts, idempotency_key, concurrency_key, lease_node, cancel_requested_by, output,
       error, created_at, started_at, finished_at, updated_at
  FROM appliance.tasks
 WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR state = $2)
 ORDER BY task_id DESC
 LIMIT $3;

-- name: list_steps
-- A task's checkpoints in order.
SELECT task_id, position, name, output, attempt, started_at, duration_ms
  FROM appliance.steps WHERE task_id = $1 ORDER BY position;

-- name: list_attempts
-- A task's attempts in order.
SELECT task_id, attempt, node, worker, started_at, ended_at, outcome, error
  FROM appliance.task_attempts WHERE task_id = $1 ORDER BY attempt;

-- name: count_tasks_by_state
-- How many tasks are in each state (doctor, readiness detail).
SELECT state, count(*) AS n FROM appliance.tasks GROUP BY state;
