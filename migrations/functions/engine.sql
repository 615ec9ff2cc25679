-- The engine's state machine: every transition of a task that Postgres makes, as it is today.
--
-- This file is the current truth. The migrations runner applies it after the numbered
-- migrations and again whenever its text changes (recorded with its SHA-256 in
-- appliance.schema_functions), so every database runs what this file says, and the frozen
-- migrations keep the tables and the history. Numbered migrations after 0014 do not define
-- the functions of this file (a test checks). A change of a function's arguments or result
-- drops the old signature here first (DROP FUNCTION IF EXISTS ...), so the whole change
-- applies in one transaction.
--
--     (new)             submit_task        -> queued
--     queued            claim_tasks        -> running (attempt n, leased to one worker)
--     running           record_step        -> running (one more checkpoint)
--     running           finish_task        -> succeeded | failed | cancelled | waiting
--                                             | queued (a retry at a time, or released in place)
--     running           requeue_abandoned  -> queued in place | failed (max_crashes) | cancelled
--                       (its node restarted, its lease expired: expire_leases; or its worker
--                       lost Postgres)
--     queued, waiting   cancel_task        -> cancelled (running: a cancel is requested, which
--                                             the attempt's next boundary or end carries out)
--     failed, cancelled retry_task         -> queued
--     waiting           resume_waiting     -> queued
--
-- Every transition writes its audit entry and its outbox event in the same transaction
-- (task_event). Every write of a running attempt checks first that its worker holds the lease
-- (lease_held), or writes nothing.

-- The lease: worker p_worker runs attempt p_attempt of task t. Its one definition (a SQL
-- expression, inlined where it is used).
CREATE OR REPLACE FUNCTION appliance.lease_held(
    t appliance.tasks, p_worker text, p_attempt integer
) RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT t.state = 'running' AND t.lease_owner = p_worker AND t.attempts = p_attempt
$$;

-- One event and one audit entry about a task, in the caller's transaction.
CREATE OR REPLACE FUNCTION appliance.task_event(
    p_task bigint, p_tenant text, p_actor text, p_type text, p_detail jsonb
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM appliance.audit_append('task:' || p_task, p_tenant, p_task, p_actor, p_type, p_detail);
    INSERT INTO appliance.outbox_events (tenant_id, task_id, type, payload)
    VALUES (p_tenant, p_task, p_type, p_detail || jsonb_build_object('task_id', p_task));
END $$;

-- A new task (queued), or the one the tenant submitted before under the same idempotency key
-- (created false). With p_notify false the caller wakes the workers itself once this has
-- committed (a notification sent after it: appliance/engine/wakeups.py), so that concurrent
-- submits do not queue behind one another for the lock Postgres takes to commit a NOTIFY.
DROP FUNCTION IF EXISTS appliance.submit_task(text, text, json, integer, timestamptz, integer,
                                              text, text, integer, text, integer);
CREATE OR REPLACE FUNCTION appliance.submit_task(
    p_tenant text, p_workflow text, p_input json, p_priority integer, p_run_after timestamptz,
    p_max_attempts integer, p_idempotency_key text, p_concurrency_key text,
    p_concurrency_limit integer, p_actor text, p_max_crashes integer, p_notify boolean DEFAULT true
) RETURNS TABLE (task_id bigint, created boolean, workflow text, input json)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_id bigint;
BEGIN
    INSERT INTO appliance.tasks AS t (tenant_id, workflow, input, priority, run_after,
        max_attempts, idempotency_key, concurrency_key, concurrency_limit, max_crashes)
    VALUES (p_tenant, p_workflow, p_input, p_priority, coalesce(p_run_after, now()),
        p_max_attempts, p_idempotency_key, p_concurrency_key, p_concurrency_limit, p_max_crashes)
    ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING t.task_id INTO v_id;
    IF v_id IS NULL THEN
        RETURN QUERY SELECT t.task_id, false, t.workflow, t.input FROM appliance.tasks t
            WHERE t.tenant_id = p_tenant AND t.idempotency_key = p_idempotency_key;
        RETURN;
    END IF;
    PERFORM appliance.task_event(v_id, p_tenant, p_actor, 'task.submitted',
        jsonb_build_object('workflow', p_workflow, 'priority', p_priority,
                           'idempotency_key', p_idempotency_key));
    IF p_notify THEN
        PERFORM pg_notify('appliance_tasks', '');
    END IF;
    RETURN QUERY SELECT v_id, true, p_workflow, p_input;
END $$;

-- Claim up to p_n ready tasks. Fairness and limits are two dimensions: each tenant has a soft
-- fair share of running tasks (p_tenant_share), and a task whose workflow names an integration
-- counts against that integration's hard limit (concurrency_limit) across all tenants.
-- Pass 1 keeps tenants to their share and integrations to their limit; pass 2 lets tenants use
-- the slots nobody else wants (work-conserving), never past a hard limit. A tenant or key that
-- fills up within this claim joins the exclusions and the scan starts again, so a long queue
-- of one never hides the others' tasks. The scan asks for no more rows than it still needs, so
-- a claim locks only the rows it takes (and at most one per full key it finds).
CREATE OR REPLACE FUNCTION appliance.claim_tasks(
    p_worker text, p_node text, p_n integer, p_lease_seconds double precision,
    p_workflows text[], p_tenant_share integer
) RETURNS TABLE (task_id bigint, tenant_id text, workflow text, input json, attempts integer,
                 max_attempts integer, checkpoints json)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_tenants_full text[];
    v_keys_full    text[];
    v_by_tenant    jsonb;
    v_taken_key    jsonb := '{}';
    v_ids          bigint[] := '{}';
    v_cand         record;
    v_row          record;
    v_count        integer;
    v_rescan       boolean;
BEGIN
    IF p_n <= 0 THEN
        RETURN;
    END IF;
    SELECT coalesce(jsonb_object_agg(k.tenant_id, k.n), '{}'),
           coalesce(array_agg(k.tenant_id) FILTER (WHERE k.n >= p_tenant_share), '{}')
      INTO v_by_tenant, v_tenants_full
      FROM (SELECT r.tenant_id, count(*) AS n FROM appliance.tasks r
             WHERE r.state = 'running' GROUP BY r.tenant_id) k;
    SELECT coalesce(array_agg(k.concurrency_key) FILTER (WHERE k.n >= k.lim), '{}')
      INTO v_keys_full
      FROM (SELECT r.concurrency_key, count(*) AS n, min(r.concurrency_limit) AS lim
              FROM appliance.tasks r
             WHERE r.state = 'running' AND r.concurrency_key IS NOT NULL
             GROUP BY r.concurrency_key) k;

    FOR pass IN 1..2 LOOP
        LOOP
            EXIT WHEN cardinality(v_ids) >= p_n;
            v_rescan := false;
            FOR v_cand IN
                SELECT t.task_id, t.tenant_id, t.concurrency_key, t.concurrency_limit
                  FROM appliance.tasks t
                 WHERE t.state = 'queued' AND t.run_after <= now()
                   AND t.workflow = ANY (p_workflows)
                   AND (pass = 2 OR t.tenant_id <> ALL (v_tenants_full))
                   AND (t.concurrency_limit IS NULL OR t.concurrency_key <> ALL (v_keys_full))
                   AND t.task_id <> ALL (v_ids)
                 ORDER BY t.priority DESC, t.run_after, t.task_id
                 LIMIT p_n - cardinality(v_ids)
                 FOR UPDATE SKIP LOCKED
            LOOP
                IF pass = 1
                   AND coalesce((v_by_tenant ->> v_cand.tenant_id)::integer, 0) >= p_tenant_share
                THEN
                    v_tenants_full := v_tenants_full || v_cand.tenant_id;
                    v_rescan := true;
                    EXIT;
                END IF;
                IF v_cand.concurrency_limit IS NOT NULL THEN
                    -- A hard limit holds across workers: count again under the key's lock.
                    PERFORM pg_advisory_xact_lock(hashtextextended(v_cand.concurrency_key, 1));
                    SELECT count(*) + coalesce((v_taken_key ->> v_cand.concurrency_key)::integer, 0)
                      INTO v_count FROM appliance.tasks r
                     WHERE r.state = 'running' AND r.concurrency_key = v_cand.concurrency_key;
                    IF v_count >= v_cand.concurrency_limit THEN
                        v_keys_full := v_keys_full || v_cand.concurrency_key;
                        v_rescan := true;
                        EXIT;
                    END IF;
                    v_taken_key := v_taken_key || jsonb_build_object(v_cand.concurrency_key,
                        coalesce((v_taken_key ->> v_cand.concurrency_key)::integer, 0) + 1);
                END IF;
                v_ids := v_ids || v_cand.task_id;
                v_by_tenant := v_by_tenant || jsonb_build_object(v_cand.tenant_id,
                    coalesce((v_by_tenant ->> v_cand.tenant_id)::integer, 0) + 1);
                EXIT WHEN cardinality(v_ids) >= p_n;
            END LOOP;
            EXIT WHEN NOT v_rescan;
        END LOOP;
    END LOOP;

    IF cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;
    FOR v_row IN
        UPDATE appliance.tasks t
           SET state = 'running', attempts = t.attempts + 1, lease_owner = p_worker,
               lease_node = p_node,
               lease_expires_at = now() + make_interval(secs => p_lease_seconds),
               started_at = coalesce(t.started_at, now()), updated_at = now(), wait_reason = NULL
         WHERE t.task_id = ANY (v_ids)
        RETURNING t.task_id, t.tenant_id, t.workflow, t.input, t.attempts, t.max_attempts
    LOOP
        INSERT INTO appliance.task_attempts (task_id, attempt, tenant_id, node, worker)
        VALUES (v_row.task_id, v_row.attempts, v_row.tenant_id, p_node, p_worker);
        PERFORM appliance.task_event(v_row.task_id, v_row.tenant_id, p_worker, 'task.started',
                                     jsonb_build_object('attempt', v_row.attempts, 'node', p_node));
        task_id := v_row.task_id;
        tenant_id := v_row.tenant_id;
        workflow := v_row.workflow;
        input := v_row.input;
        attempts := v_row.attempts;
        max_attempts := v_row.max_attempts;
        checkpoints := (SELECT coalesce(json_agg(json_build_array(s.name, s.output, s.error)
                                                 ORDER BY s.position), '[]'::json)
                          FROM appliance.steps s WHERE s.task_id = v_row.task_id);
        RETURN NEXT;
    END LOOP;
END $$;

-- A step's checkpoint (or the failure its workflow handled), its audit entry and its event.
-- The audit entry carries the step's result as the checkpoint's exact JSON text (`appliance
-- audit replay` rebuilds the checkpoints from it); the event does not (events leave the box).
CREATE OR REPLACE FUNCTION appliance.write_step(
    p_task bigint, p_tenant text, p_worker text, p_attempt integer, p_position integer,
    p_name text, p_output json, p_started_at timestamptz, p_duration_ms double precision,
    p_error json
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_action text := CASE WHEN p_error IS NULL THEN 'step.completed' ELSE 'step.failed' END;
    v_detail jsonb := jsonb_build_object('step', p_name, 'position', p_position,
                                         'attempt', p_attempt,
                                         'duration_ms', round(p_duration_ms::numeric, 3));
BEGIN
    INSERT INTO appliance.steps (task_id, position, tenant_id, name, output, error, attempt,
                                 started_at, duration_ms)
    VALUES (p_task, p_position, p_tenant, p_name, p_output, p_error, p_attempt, p_started_at,
            p_duration_ms);
    PERFORM appliance.audit_append('task:' || p_task, p_tenant, p_task, p_worker, v_action,
        v_detail || jsonb_build_object('output', p_output::text, 'error', p_error::text));
    INSERT INTO appliance.outbox_events (tenant_id, task_id, type, payload)
    VALUES (p_tenant, p_task, v_action, v_detail || jsonb_build_object('task_id', p_task));
END $$;

-- A step of a running attempt (not its last, which finish_task writes): its checkpoint, only
-- while p_worker holds the lease. Returns whether a cancel was requested; NULL when the lease
-- is lost (nothing written).
CREATE OR REPLACE FUNCTION appliance.record_step(
    p_task bigint, p_worker text, p_attempt integer, p_position integer, p_name text,
    p_output json, p_started_at timestamptz, p_duration_ms double precision, p_error json
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_tenant text;
    v_cancel boolean;
BEGIN
    SELECT t.tenant_id, t.cancel_requested_by IS NOT NULL INTO v_tenant, v_cancel
      FROM appliance.tasks t
     WHERE t.task_id = p_task AND appliance.lease_held(t, p_worker, p_attempt);
    IF v_tenant IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM appliance.write_step(p_task, v_tenant, p_worker, p_attempt, p_position, p_name,
                                 p_output, p_started_at, p_duration_ms, p_error);
    RETURN v_cancel;
END $$;

-- End an attempt, with the last step's checkpoint if one is pending, and claim the next tasks
-- in the same commit. p_outcome: succeeded, failed, retry (queued again at p_retry_at),
-- cancelled, released (queued again in its place: its run_after is kept), or waiting (the task
-- parks with p_error as its wait_reason until resume_waiting puts it back; like a release, that
-- attempt does not count against max_attempts). A cancel requested meanwhile wins over a
-- retry, a release or a wait.
CREATE OR REPLACE FUNCTION appliance.finish_task(
    p_task bigint, p_worker text, p_attempt integer, p_outcome text, p_output json,
    p_error text, p_retry_at timestamptz,
    p_position integer, p_name text, p_step_output json, p_started_at timestamptz,
    p_duration_ms double precision, p_step_error json,
    p_node text, p_claim integer, p_lease_seconds double precision, p_workflows text[],
    p_tenant_share integer
) RETURNS TABLE (task_id bigint, tenant_id text, workflow text, input json, attempts integer,
                 max_attempts integer, checkpoints json)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_tenant text;
    v_state  text;
    v_limit  integer;
    v_detail jsonb;
BEGIN
    v_state := CASE p_outcome WHEN 'retry' THEN 'queued' WHEN 'released' THEN 'queued'
                              ELSE p_outcome END;
    -- The lease check: this worker's lease of this attempt, or nothing is written.
    UPDATE appliance.tasks t
       SET state = CASE WHEN v_state IN ('queued', 'waiting') AND t.cancel_requested_by IS NOT NULL
                        THEN 'cancelled' ELSE v_state END,
           output = CASE WHEN p_outcome = 'succeeded' THEN p_output ELSE t.output END,
           error = CASE WHEN p_outcome IN ('failed', 'retry') THEN p_error ELSE t.error END,
           wait_reason = CASE WHEN p_outcome = 'waiting' THEN p_error END,
           run_after = CASE WHEN p_outcome = 'retry' THEN p_retry_at ELSE t.run_after END,
           max_attempts = CASE WHEN p_outcome IN ('released', 'waiting') THEN t.max_attempts + 1
                               ELSE t.max_attempts END,
           finished_at = CASE WHEN v_state IN ('queued', 'waiting')
                                   AND t.cancel_requested_by IS NULL
                              THEN NULL ELSE now() END,
           lease_owner = NULL, lease_node = NULL, lease_expires_at = NULL, updated_at = now()
     WHERE t.task_id = p_task AND appliance.lease_held(t, p_worker, p_attempt)
    RETURNING t.tenant_id, t.state, t.concurrency_limit INTO v_tenant, v_state, v_limit;
    IF v_tenant IS NULL THEN
        RAISE EXCEPTION 'task % attempt % is no longer leased to %', p_task, p_attempt, p_worker
            USING ERRCODE = 'AP409';
    END IF;
    IF p_position IS NOT NULL THEN
        PERFORM appliance.write_step(p_task, v_tenant, p_worker, p_attempt, p_position,
                                     p_name, p_step_output, p_started_at, p_duration_ms,
                                     p_step_error);
    END IF;
    UPDATE appliance.task_attempts a SET ended_at = now(), outcome = p_outcome, error = p_error
     WHERE a.task_id = p_task AND a.attempt = p_attempt;
    v_detail := jsonb_build_object('attempt', p_attempt);
    IF p_error IS NOT NULL THEN
        v_detail := v_detail || jsonb_build_object('error', p_error);
    END IF;
    IF p_outcome = 'retry' THEN
        v_detail := v_detail || jsonb_build_object('retry_at', p_retry_at);
    END IF;
    IF p_outcome = 'waiting' THEN
        v_detail := jsonb_build_object('attempt', p_attempt, 'reason', p_error);
    END IF;
    PERFORM appliance.task_event(p_task, v_tenant, p_worker, 'task.' || p_outcome, v_detail);
    IF v_state = 'cancelled' AND p_outcome <> 'cancelled' THEN
        PERFORM appliance.task_event(p_task, v_tenant, p_worker, 'task.cancelled', '{}'::jsonb);
    END IF;
    -- Wake other workers when this frees a task to run: its retry or release, or a slot of a
    -- hard concurrency limit that a ready task may be waiting for.
    IF v_state = 'queued' OR v_limit IS NOT NULL THEN
        PERFORM pg_notify('appliance_tasks', '');
    END IF;
    RETURN QUERY SELECT * FROM appliance.claim_tasks(p_worker, p_node, p_claim, p_lease_seconds,
                                                      p_workflows, p_tenant_share);
END $$;

-- Put back in the queue running tasks whose holder is gone: with p_node, those of a restarted
-- node; with p_tasks, those a worker gave up while Postgres was away; with neither, those whose
-- lease expired (the worker's heartbeat calls expire_leases, which adds the outage grace).
-- The lost attempt is not charged and the task keeps its place in the queue; a task lost with
-- its worker (not p_tasks) counts a crash, and its max_crashes-th crash fails it. Returns how
-- many.
CREATE OR REPLACE FUNCTION appliance.requeue_abandoned(
    p_node text, p_tasks bigint[], p_actor text
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_task   record;
    v_n      integer := 0;
    v_crash  integer := CASE WHEN p_tasks IS NULL THEN 1 ELSE 0 END;
    v_reason text := CASE WHEN p_tasks IS NOT NULL THEN 'worker_lost_database'
                          WHEN p_node IS NOT NULL THEN 'node_restarted'
                          ELSE 'lease_expired' END;
    v_detail jsonb;
BEGIN
    FOR v_task IN
        UPDATE appliance.tasks t
           SET crashes = t.crashes + v_crash,
               state = CASE WHEN t.cancel_requested_by IS NOT NULL THEN 'cancelled'
                            WHEN t.crashes + v_crash >= t.max_crashes THEN 'failed'
                            ELSE 'queued' END,
               error = CASE WHEN t.cancel_requested_by IS NULL
                                 AND t.crashes + v_crash >= t.max_crashes
                            THEN format('its worker was lost %s times while running it (the '
                                        'last: %s); a task that ends its worker every time '
                                        'stops at max_crashes = %s', t.crashes + v_crash,
                                        v_reason, t.max_crashes)
                            ELSE t.error END,
               finished_at = CASE WHEN t.cancel_requested_by IS NOT NULL
                                       OR t.crashes + v_crash >= t.max_crashes
                                  THEN now() END,
               max_attempts = t.max_attempts + 1,
               lease_owner = NULL, lease_node = NULL, lease_expires_at = NULL,
               updated_at = now()
         WHERE t.task_id IN (
                SELECT r.task_id FROM appliance.tasks r
                 WHERE r.state = 'running'
                   AND (CASE WHEN p_tasks IS NOT NULL THEN r.task_id = ANY (p_tasks)
                                                       AND r.lease_owner = p_actor
                             WHEN p_node IS NOT NULL THEN r.lease_node = p_node
                             ELSE r.lease_expires_at < now() END)
                 FOR UPDATE SKIP LOCKED)
        RETURNING t.task_id, t.tenant_id, t.attempts, t.state, t.crashes, t.error
    LOOP
        UPDATE appliance.task_attempts a SET ended_at = now(), outcome = v_reason
         WHERE a.task_id = v_task.task_id AND a.attempt = v_task.attempts;
        v_detail := jsonb_build_object('attempt', v_task.attempts, 'reason', v_reason,
                                       'crashes', v_task.crashes);
        IF v_task.state = 'failed' THEN
            v_detail := v_detail || jsonb_build_object('error', v_task.error);
        END IF;
        PERFORM appliance.task_event(v_task.task_id, v_task.tenant_id, p_actor,
            CASE v_task.state WHEN 'queued' THEN 'task.requeued' ELSE 'task.' || v_task.state END,
            v_detail);
        v_n := v_n + 1;
    END LOOP;
    IF v_n > 0 THEN
        PERFORM pg_notify('appliance_tasks', '');
    END IF;
    RETURN v_n;
END $$;

-- The heartbeat's sweep: requeue the tasks whose lease expired, unless Postgres was away within
-- the last p_lease_seconds. With p_outage the caller reports that it could not reach Postgres
-- since its previous sweep. Leases count from the later of the server's start and the last
-- reported outage, so every worker renews before any lease expires. Returns how many.
CREATE OR REPLACE FUNCTION appliance.expire_leases(
    p_actor text, p_lease_seconds double precision, p_outage boolean
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_back timestamptz;
BEGIN
    IF p_outage THEN
        INSERT INTO appliance.lease_pauses AS p (singleton, resumed_at, reported_by)
        VALUES (true, now(), p_actor)
        ON CONFLICT (singleton) DO UPDATE
           SET resumed_at = greatest(p.resumed_at, EXCLUDED.resumed_at),
               reported_by = EXCLUDED.reported_by;
    END IF;
    SELECT p.resumed_at INTO v_back FROM appliance.lease_pauses p;
    IF now() < greatest(pg_postmaster_start_time(), v_back)
               + make_interval(secs => p_lease_seconds) THEN
        RETURN 0;
    END IF;
    RETURN appliance.requeue_abandoned(NULL, NULL, p_actor);
END $$;

-- 'cancelled' (now), 'cancelling' (at the next step boundary), 'ended:<state>', or NULL.
CREATE OR REPLACE FUNCTION appliance.cancel_task(p_task bigint, p_actor text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_task record;
BEGIN
    SELECT t.tenant_id, t.state INTO v_task FROM appliance.tasks t
     WHERE t.task_id = p_task FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_task.state IN ('succeeded', 'failed', 'cancelled') THEN
        RETURN 'ended:' || v_task.state;
    END IF;
    IF v_task.state = 'running' THEN
        UPDATE appliance.tasks SET cancel_requested_by = p_actor, updated_at = now()
         WHERE task_id = p_task;
        PERFORM appliance.task_event(p_task, v_task.tenant_id, p_actor, 'task.cancel_requested',
                                     '{}'::jsonb);
        RETURN 'cancelling';
    END IF;
    UPDATE appliance.tasks SET state = 'cancelled', cancel_requested_by = p_actor,
           finished_at = now(), updated_at = now()
     WHERE task_id = p_task;
    PERFORM appliance.task_event(p_task, v_task.tenant_id, p_actor, 'task.cancelled', '{}'::jsonb);
    RETURN 'cancelled';
END $$;

-- 'queued', 'refused:<state>' (only failed or cancelled tasks are retried), or NULL. The task
-- gets p_attempts more attempts, its crash count starts again, and it resumes from its last
-- checkpoint.
CREATE OR REPLACE FUNCTION appliance.retry_task(p_task bigint, p_actor text, p_attempts integer)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_task record;
BEGIN
    SELECT t.tenant_id, t.state INTO v_task FROM appliance.tasks t
     WHERE t.task_id = p_task FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_task.state NOT IN ('failed', 'cancelled') THEN
        RETURN 'refused:' || v_task.state;
    END IF;
    UPDATE appliance.tasks
       SET state = 'queued', max_attempts = attempts + p_attempts, error = NULL,
           cancel_requested_by = NULL, crashes = 0,
           run_after = now(), finished_at = NULL, updated_at = now()
     WHERE task_id = p_task;
    PERFORM appliance.task_event(p_task, v_task.tenant_id, p_actor, 'task.retried', '{}'::jsonb);
    PERFORM pg_notify('appliance_tasks', '');
    RETURN 'queued';
END $$;

-- Put back in the queue a tenant's tasks waiting for a reason that starts with p_reason_prefix
-- (for example 'budget:' once a budget was raised). Returns how many.
CREATE OR REPLACE FUNCTION appliance.resume_waiting(
    p_tenant text, p_reason_prefix text, p_actor text
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_task record;
    v_n    integer := 0;
BEGIN
    FOR v_task IN
        UPDATE appliance.tasks t
           SET state = 'queued', run_after = now(), updated_at = now()
         WHERE t.task_id IN (
                SELECT w.task_id FROM appliance.tasks w
                 WHERE w.state = 'waiting' AND w.tenant_id = p_tenant
                   AND left(w.wait_reason, length(p_reason_prefix)) = p_reason_prefix
                 FOR UPDATE SKIP LOCKED)
        RETURNING t.task_id, t.tenant_id, t.wait_reason
    LOOP
        PERFORM appliance.task_event(v_task.task_id, v_task.tenant_id, p_actor, 'task.resumed',
                                     jsonb_build_object('reason', v_task.wait_reason));
        v_n := v_n + 1;
    END LOOP;
    IF v_n > 0 THEN
        PERFORM pg_notify('appliance_tasks', '');
    END IF;
    RETURN v_n;
END $$;

-- An entry in a task's audit chain by the holder of its lease only (a tool call's intent
-- before its external write, for one); NULL, and nothing written, without the lease.
CREATE OR REPLACE FUNCTION appliance.task_audit(
    p_task bigint, p_worker text, p_attempt integer, p_action text, p_detail jsonb
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_tenant text;
BEGIN
    SELECT t.tenant_id INTO v_tenant FROM appliance.tasks t
     WHERE t.task_id = p_task AND appliance.lease_held(t, p_worker, p_attempt)
       FOR SHARE;
    IF v_tenant IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN appliance.audit_append('task:' || p_task, v_tenant, p_task, p_worker, p_action,
                                  p_detail);
END $$;
