-- name: submit_task
-- Insert a task (or find the one with the same idempotency key), with its audit entry and event; $12: notify the workers in this transaction.
SELECT task_id, created, workflow, input
  FROM appliance.submit_task($1, $2, $3::text::json, $4, $5, $6, $7, $8, $9, $10, $11, $12);

-- name: notify_workers
-- Wake the workers: tasks committed before this may be ready (a commit that keeps nothing, so it does not wait for the WAL flush).
SELECT set_config('synchronous_commit', 'off', true), pg_notify('appliance_tasks', '');

-- name: claim_tasks
-- Lease up to $3 ready tasks to worker $1 on node $2, with their earlier checkpoints.
SELECT task_id, tenant_id, workflow, input, attempts, max_attempts, checkpoints
  FROM appliance.claim_tasks($1, $2, $3, $4, $5, $6);

-- name: record_step
-- One step: lease check, checkpoint (or handled failure), audit entry (with the result, verbatim), outbox event (without it); whether a cancel was requested (NULL: the lease is lost).
SELECT appliance.record_step($1, $2, $3, $4, $5, $6::text::json, $7, $8, $9::text::json);

-- name: finish_task
-- End an attempt (with its pending checkpoint) and claim the next tasks in the same commit.
SELECT task_id, tenant_id, workflow, input, attempts, max_attempts, checkpoints
  FROM appliance.finish_task($1, $2, $3, $4, $5::text::json, $6, $7, $8, $9, $10::text::json,
                             $11, $12, $13::text::json, $14, $15, $16, $17, $18);

-- name: requeue_abandoned
-- Requeue the running tasks of node $1, or tasks $2 that worker $3 gave up, or expired ones; uncharged, in their place.
SELECT appliance.requeue_abandoned($1, $2, $3);

-- name: expire_leases
-- The heartbeat's sweep by worker $1 (lease $2 s; $3: it lost Postgres since its last sweep): requeue expired leases unless Postgres was away lately.
SELECT appliance.expire_leases($1, $2, $3);

-- name: extend_leases
-- Heartbeat: push back the leases of tasks $3 that worker $1 runs; returns those still held.
UPDATE appliance.tasks
   SET lease_expires_at = now() + make_interval(secs => $2)
 WHERE lease_owner = $1 AND state = 'running' AND task_id = ANY ($3::bigint[])
RETURNING task_id;

-- name: next_due_at
-- When the earliest delayed task of these workflows becomes ready (ready ones held back by a
-- concurrency limit wait for a notification instead, so an idle worker never spins on them).
SELECT min(run_after) FROM appliance.tasks
 WHERE state = 'queued' AND run_after > now() AND workflow = ANY ($1::text[]);

-- name: cancel_task
-- Cancel a task now, or ask its worker to stop at the next step boundary.
SELECT appliance.cancel_task($1, $2);

-- name: retry_task
-- Put a failed or cancelled task back in the queue with $3 more attempts; it resumes from its last checkpoint.
SELECT appliance.retry_task($1, $2, $3);

-- name: get_task
-- One task by id.
SELECT task_id, tenant_id, workflow, input, state, wait_reason, priority, run_after, attempts,
       max_attempts, crashes, max_crashes, idempotency_key, concurrency_key, lease_node,
       cancel_requested_by, output, error, created_at, started_at, finished_at, updated_at,
       replay_of, replay_from
  FROM appliance.tasks WHERE task_id = $1;

-- name: list_tasks
-- The newest tasks, optionally of one tenant and one state.
SELECT task_id, tenant_id, workflow, input, state, wait_reason, priority, run_after, attempts,
       max_attempts, crashes, max_crashes, idempotency_key, concurrency_key, lease_node,
       cancel_requested_by, output, error, created_at, started_at, finished_at, updated_at,
       replay_of, replay_from
  FROM appliance.tasks
 WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR state = $2)
 ORDER BY task_id DESC
 LIMIT $3;

-- name: list_steps
-- A task's checkpoints in order.
SELECT task_id, position, name, output, error, attempt, started_at, duration_ms
  FROM appliance.steps WHERE task_id = $1 ORDER BY position;

-- name: list_checkpoint_texts
-- A task's checkpoints in order, output and error as the JSON text stored (verbatim).
SELECT position, name, output::text AS output, error::text AS error
  FROM appliance.steps WHERE task_id = $1 ORDER BY position;

-- name: replay_task
-- A new task replaying task $1 from position $2 (step $3; NULL: from the start) by $4, with $5 attempts and $6 crashes allowed; NULL when $1 does not exist.
SELECT appliance.replay_task($1, $2, $3, $4, $5, $6);

-- name: list_attempts
-- A task's attempts in order.
SELECT task_id, attempt, node, worker, started_at, ended_at, outcome, error
  FROM appliance.task_attempts WHERE task_id = $1 ORDER BY attempt;

-- name: count_tasks_by_state
-- How many tasks are in each state (doctor, readiness detail).
SELECT state, count(*) AS n FROM appliance.tasks GROUP BY state;

-- name: resume_waiting
-- Requeue tenant $1's tasks waiting for a reason starting with $2; returns how many.
SELECT appliance.resume_waiting($1, $2, $3);

-- name: list_tasks_page
-- A page of tasks of tenants $1, newest first, narrowed by state $2, workflow $3, agent $4, text $5 in the input or error, created in [$6, $7), id below $8; at most $9.
SELECT task_id, tenant_id, workflow, input, state, wait_reason, priority, run_after, attempts,
       max_attempts, crashes, max_crashes, idempotency_key, concurrency_key, lease_node,
       cancel_requested_by, output, error, created_at, started_at, finished_at, updated_at,
       replay_of, replay_from
  FROM appliance.tasks
 WHERE tenant_id = ANY ($1::text[])
   AND ($2::text IS NULL OR state = $2)
   AND ($3::text IS NULL OR workflow = $3)
   AND ($4::text IS NULL OR (workflow = 'agent.run' AND input ->> 'agent' = $4))
   AND ($5::text IS NULL OR strpos(lower(input::text), lower($5)) > 0
        OR strpos(lower(coalesce(error, '')), lower($5)) > 0)
   AND ($6::timestamptz IS NULL OR created_at >= $6)
   AND ($7::timestamptz IS NULL OR created_at < $7)
   AND ($8::bigint IS NULL OR task_id < $8)
 ORDER BY task_id DESC
 LIMIT $9;

-- name: count_tasks_matching
-- How many tasks of tenants $1 match the narrowing of list_tasks_page ($2 to $7).
SELECT count(*)
  FROM appliance.tasks
 WHERE tenant_id = ANY ($1::text[])
   AND ($2::text IS NULL OR state = $2)
   AND ($3::text IS NULL OR workflow = $3)
   AND ($4::text IS NULL OR (workflow = 'agent.run' AND input ->> 'agent' = $4))
   AND ($5::text IS NULL OR strpos(lower(input::text), lower($5)) > 0
        OR strpos(lower(coalesce(error, '')), lower($5)) > 0)
   AND ($6::timestamptz IS NULL OR created_at >= $6)
   AND ($7::timestamptz IS NULL OR created_at < $7);

-- name: count_queue
-- Tasks of tenants $1 not yet ended, per tenant, workflow and state, with the oldest one's age in seconds.
SELECT tenant_id, workflow, state, count(*) AS tasks,
       greatest(extract(epoch FROM now() - min(created_at)), 0)::double precision
           AS oldest_seconds
  FROM appliance.tasks
 WHERE state IN ('queued', 'running', 'waiting') AND tenant_id = ANY ($1::text[])
 GROUP BY tenant_id, workflow, state
 ORDER BY tenant_id, workflow, state;
