-- name: get_schedule
-- One schedule of tenant $1 by name $2, with its last task's state (no row: none).
SELECT s.schedule_id, s.tenant_id, s.name, s.cron, s.timezone, s.workflow, s.input, s.catchup,
       s.catchup_limit, s.overlap, s.origin, s.paused, s.next_fire_at, s.last_slot_at,
       s.last_task_id, t.state AS last_task_state, s.open_tasks, s.missed_slots, s.created_by,
       s.created_at, s.updated_at
  FROM appliance.schedules s LEFT JOIN appliance.tasks t ON t.task_id = s.last_task_id
 WHERE s.tenant_id = $1 AND s.name = $2;

-- name: list_schedules
-- Every schedule (of tenant $1 if given), with its last task's state, by tenant and name.
SELECT s.schedule_id, s.tenant_id, s.name, s.cron, s.timezone, s.workflow, s.input, s.catchup,
       s.catchup_limit, s.overlap, s.origin, s.paused, s.next_fire_at, s.last_slot_at,
       s.last_task_id, t.state AS last_task_state, s.open_tasks, s.missed_slots, s.created_by,
       s.created_at, s.updated_at
  FROM appliance.schedules s LEFT JOIN appliance.tasks t ON t.task_id = s.last_task_id
 WHERE $1::text IS NULL OR s.tenant_id = $1
 ORDER BY s.tenant_id, s.name;

-- name: insert_schedule
-- Add a schedule (next slot $11), audited in the tenant's chain as schedule.added by $12; returns its id.
WITH added AS (
    INSERT INTO appliance.schedules (tenant_id, name, cron, timezone, workflow, input, catchup,
                                     catchup_limit, overlap, origin, next_fire_at, created_by)
    VALUES ($1, $2, $3, $4, $5, $6::text::json, $7, $8, $9, $10, $11, $12)
    RETURNING schedule_id, tenant_id, name
)
SELECT a.schedule_id,
       appliance.audit_append('tenant:' || a.tenant_id, a.tenant_id, NULL, $12, 'schedule.added',
                              jsonb_build_object('schedule', a.name, 'cron', $3::text,
                                                 'timezone', $4::text, 'workflow', $5::text,
                                                 'origin', $10::text, 'next_fire_at', $11::timestamptz))
  FROM added a;

-- name: update_schedule
-- Replace schedule $1's definition (the config changed it) and its next slot $10, audited as schedule.changed by $11.
WITH changed AS (
    UPDATE appliance.schedules
       SET cron = $2, timezone = $3, workflow = $4, input = $5::text::json, catchup = $6,
           catchup_limit = $7, overlap = $8, origin = $9, next_fire_at = $10, updated_at = now()
     WHERE schedule_id = $1
    RETURNING tenant_id, name
)
SELECT appliance.audit_append('tenant:' || c.tenant_id, c.tenant_id, NULL, $11, 'schedule.changed',
                              jsonb_build_object('schedule', c.name, 'cron', $2::text,
                                                 'timezone', $3::text, 'workflow', $4::text,
                                                 'origin', $9::text, 'next_fire_at', $10::timestamptz))
  FROM changed c;

-- name: set_schedule_paused
-- Pause ($3 true) or resume (next slot $4) schedule $2 of tenant $1, audited by $5; returns whether it was paused before (no row: none).
WITH before AS (
    SELECT schedule_id, paused FROM appliance.schedules
     WHERE tenant_id = $1 AND name = $2 FOR UPDATE
), changed AS (
    UPDATE appliance.schedules s
       SET paused = $3, next_fire_at = coalesce($4, s.next_fire_at), updated_at = now()
      FROM before b
     WHERE s.schedule_id = b.schedule_id AND b.paused <> $3
    RETURNING s.tenant_id, s.name, s.next_fire_at
), audited AS (
    SELECT appliance.audit_append('tenant:' || c.tenant_id, c.tenant_id, NULL, $5,
                                  CASE WHEN $3 THEN 'schedule.paused' ELSE 'schedule.resumed' END,
                                  jsonb_build_object('schedule', c.name,
                                                     'next_fire_at', c.next_fire_at))
      FROM changed c
)
SELECT b.paused AS was_paused, (SELECT count(*) FROM audited) AS audited FROM before b;

-- name: delete_schedule
-- Remove schedule $2 of tenant $1 and its slot records (its tasks stay), audited by $3; returns its id (no row: none).
WITH gone AS (
    DELETE FROM appliance.schedules WHERE tenant_id = $1 AND name = $2
    RETURNING schedule_id, tenant_id, name, cron, workflow
)
SELECT g.schedule_id,
       appliance.audit_append('tenant:' || g.tenant_id, g.tenant_id, NULL, $3, 'schedule.removed',
                              jsonb_build_object('schedule', g.name, 'cron', g.cron,
                                                 'workflow', g.workflow))
  FROM gone g;

-- name: claim_due_schedule
-- Lock the unpaused schedule due longest by $1 (not one of $2), skipping those another node holds.
SELECT schedule_id, tenant_id, name, cron, timezone, workflow, input, catchup, catchup_limit,
       overlap, origin, paused, next_fire_at, last_slot_at, last_task_id, NULL::text AS last_task_state,
       open_tasks, missed_slots, created_by, created_at, updated_at
  FROM appliance.schedules
 WHERE NOT paused AND next_fire_at <= $1 AND schedule_id <> ALL ($2::bigint[])
 ORDER BY next_fire_at
 LIMIT 1
   FOR UPDATE SKIP LOCKED;

-- name: lock_schedule
-- Lock schedule $2 of tenant $1 for run-now, waiting for a node that is firing it (no row: none).
SELECT schedule_id, tenant_id, name, cron, timezone, workflow, input, catchup, catchup_limit,
       overlap, origin, paused, next_fire_at, last_slot_at, last_task_id, NULL::text AS last_task_state,
       open_tasks, missed_slots, created_by, created_at, updated_at
  FROM appliance.schedules
 WHERE tenant_id = $1 AND name = $2
   FOR UPDATE;

-- name: unfinished_tasks
-- Which of tasks $1 are not ended yet, in the order given.
SELECT t.task_id FROM unnest($1::bigint[]) WITH ORDINALITY AS o(task_id, position)
  JOIN appliance.tasks t ON t.task_id = o.task_id
 WHERE t.state NOT IN ('succeeded', 'failed', 'cancelled')
 ORDER BY o.position;

-- name: record_slot
-- What became of slot $2 of schedule $1 (tenant $3): outcome $4, task $5, reason $6; false when recorded before.
INSERT INTO appliance.schedule_slots (schedule_id, slot_at, tenant_id, outcome, task_id, reason)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (schedule_id, slot_at) DO NOTHING
RETURNING true;

-- name: advance_schedule
-- After firing: schedule $1's next slot $2, newest slot handled $3, last task $4, open tasks $5, $6 more missed slots.
UPDATE appliance.schedules
   SET next_fire_at = $2, last_slot_at = coalesce($3, last_slot_at),
       last_task_id = coalesce($4, last_task_id), open_tasks = $5,
       missed_slots = missed_slots + $6, updated_at = now()
 WHERE schedule_id = $1;

-- name: record_run_now
-- After run-now by $4: schedule $1's last task $2 and open tasks $3, audited in the tenant's chain.
WITH ran AS (
    UPDATE appliance.schedules
       SET last_task_id = $2, open_tasks = $3, updated_at = now()
     WHERE schedule_id = $1
    RETURNING tenant_id, name
)
SELECT appliance.audit_append('tenant:' || r.tenant_id, r.tenant_id, NULL, $4, 'schedule.run_now',
                              jsonb_build_object('schedule', r.name, 'task_id', $2::bigint))
  FROM ran r;

-- name: next_fire_at
-- The soonest slot of any unpaused schedule (NULL: none).
SELECT min(next_fire_at) FROM appliance.schedules WHERE NOT paused;
