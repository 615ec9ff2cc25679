-- Replay and fork: a task can be started again from one of its steps, and its audit log alone
-- carries every step's result.
--
-- Step results in the audit log. From here on the audit entry of a step (step.completed,
-- step.failed) carries the step's result as the worker wrote it: `output` and `error` are the
-- checkpoint's JSON text, verbatim (a JSON string in the entry, so 1e300 stays 1e300 and not
-- the integer jsonb would make of it). `appliance audit replay N` rebuilds the checkpoints from
-- these entries alone and compares. The outbox event of a step stays as it was (without the
-- result): events leave the box, the audit log does not. Entries written before this migration
-- are unchanged and still verify (the hash covers whatever detail an entry has).
--
-- Replay. `replay_task` starts a new task of the same tenant, workflow and input that reuses
-- the source's checkpoints before position p_position (none: it runs every step again), the
-- way Temporal's reset and DBOS's fork do. The reused checkpoints are copied (attempt 0: no
-- attempt of the new task ran them), each with a `step.reused` entry carrying its result, so
-- the new task's own chain rebuilds them; the new task records its source in `replay_of` and
-- its first step run again in `replay_from`, and the source's chain gets `task.replayed`.
-- Whether the workflow's code still produces the reused steps is checked by the caller
-- (appliance/engine/replay.py) before it calls this.

ALTER TABLE appliance.tasks
    ADD COLUMN replay_of bigint REFERENCES appliance.tasks (task_id) ON DELETE SET NULL,
    ADD COLUMN replay_from text;

CREATE INDEX tasks_replay_of ON appliance.tasks (replay_of) WHERE replay_of IS NOT NULL;

-- Step audit entries carry the step's result from here on: write_step, in
-- migrations/functions/engine.sql.

-- The new task's id, or NULL when the source does not exist.
CREATE FUNCTION appliance.replay_task(
    p_source bigint, p_position integer, p_step text, p_actor text, p_max_attempts integer,
    p_max_crashes integer
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_source record;
    v_step   record;
    v_id     bigint;
    v_reused integer := 0;
BEGIN
    SELECT t.tenant_id, t.workflow, t.input, t.priority, t.concurrency_key,
           t.concurrency_limit
      INTO v_source FROM appliance.tasks t WHERE t.task_id = p_source
       FOR UPDATE;  -- the source's chain gets an entry: serialised like a cancel
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    INSERT INTO appliance.tasks (tenant_id, workflow, input, priority, max_attempts,
                                 concurrency_key, concurrency_limit, max_crashes, replay_of,
                                 replay_from)
    VALUES (v_source.tenant_id, v_source.workflow, v_source.input, v_source.priority,
            p_max_attempts, v_source.concurrency_key, v_source.concurrency_limit,
            p_max_crashes, p_source, p_step)
    RETURNING task_id INTO v_id;
    PERFORM appliance.task_event(v_id, v_source.tenant_id, p_actor, 'task.submitted',
        jsonb_build_object('workflow', v_source.workflow, 'priority', v_source.priority,
                           'idempotency_key', NULL, 'replay_of', p_source,
                           'from_step', p_step, 'from_position', p_position));
    FOR v_step IN
        SELECT s.position, s.name, s.output, s.error, s.started_at, s.duration_ms
          FROM appliance.steps s
         WHERE s.task_id = p_source AND s.position < coalesce(p_position, 0)
         ORDER BY s.position
    LOOP
        INSERT INTO appliance.steps (task_id, position, tenant_id, name, output, error,
                                     attempt, started_at, duration_ms)
        VALUES (v_id, v_step.position, v_source.tenant_id, v_step.name, v_step.output,
                v_step.error, 0, v_step.started_at, v_step.duration_ms);
        PERFORM appliance.audit_append('task:' || v_id, v_source.tenant_id, v_id, p_actor,
            'step.reused',
            jsonb_build_object('step', v_step.name, 'position', v_step.position,
                               'from_task', p_source, 'output', v_step.output::text,
                               'error', v_step.error::text));
        v_reused := v_reused + 1;
    END LOOP;
    PERFORM appliance.task_event(p_source, v_source.tenant_id, p_actor, 'task.replayed',
        jsonb_build_object('replay_task_id', v_id, 'from_step', p_step,
                           'reused_steps', v_reused));
    PERFORM pg_notify('appliance_tasks', '');
    RETURN v_id;
END $$;
