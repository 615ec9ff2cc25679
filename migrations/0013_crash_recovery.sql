-- Crashes are not the task's failure; a node name has one live holder; an outage expires no lease.
--
-- Crash recovery. An attempt lost with its worker (node_restarted: the node came back under its
-- name; lease_expired: nobody renewed the lease) or given up while Postgres was away
-- (worker_lost_database) is not charged against max_attempts, and the requeued task keeps its
-- place in the queue (its run_after is left as it was, so tasks submitted after it stay behind
-- it); a task released at shutdown keeps its place too. Attempts lost with their worker are
-- counted in `crashes`; a task whose worker is lost `max_crashes` times (it may be what kills
-- its worker) fails with that reason, so a crash loop ends.
--
-- Node names. `nodes` says which process holds each node name (pid, host, the session that
-- holds it, since, last heartbeat), for people and the console. The hold itself is a session-level advisory lock on a
-- connection of that process (appliance/engine/nodes.py), which ends with the session.
--
-- Outages. Leases count from the later of the server's start and the last outage a worker
-- reported (`lease_pauses`): after Postgres was away, every worker has a whole lease to renew
-- before any lease expires (expire_leases).
--
-- The functions below replace those of 0001_core.sql of the same names.

ALTER TABLE appliance.tasks
    ADD COLUMN crashes integer NOT NULL DEFAULT 0 CHECK (crashes >= 0),
    ADD COLUMN max_crashes integer NOT NULL DEFAULT 50 CHECK (max_crashes >= 1);

CREATE TABLE appliance.nodes (
    node         text PRIMARY KEY,
    pid          integer NOT NULL,
    host         text NOT NULL,
    backend_pid  integer NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    stopped_at   timestamptz
);

-- One row: when a worker last came back after losing Postgres.
CREATE TABLE appliance.lease_pauses (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    resumed_at  timestamptz NOT NULL,
    reported_by text NOT NULL
);

DROP FUNCTION appliance.submit_task(text, text, json, integer, timestamptz, integer, text, text,
                                    integer, text);

CREATE FUNCTION appliance.submit_task(
    p_tenant text, p_workflow text, p_input json, p_priority integer, p_run_after timestamptz,
    p_max_attempts integer, p_idempotency_key text, p_concurrency_key text,
    p_concurrency_limit integer, p_actor text, p_max_crashes integer
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
    PERFORM pg_notify('appliance_tasks', '');
    RETURN QUERY SELECT v_id, true, p_workflow, p_input;
END $$;

-- As in 0001, except that a released task keeps its run_after (its place in the queue).
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
    -- The lease check: this worker's lease of this attempt, or nothing is written. A cancel
    -- requested meanwhile wins over a retry or a release.
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
     WHERE t.task_id = p_task AND t.lease_owner = p_worker AND t.attempts = p_attempt
       AND t.state = 'running'
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
CREATE OR REPLACE FUNCTION appliance.requeue_abandoned(p_node text, p_tasks bigint[], p_actor text)
RETURNS integer LANGUAGE plpgsql AS $$
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
CREATE FUNCTION appliance.expire_leases(
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

-- As in 0001, and the retried task's crash count starts again.
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
