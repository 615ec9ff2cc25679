-- The durable core: tenants, tasks, step checkpoints, attempts, the hash-chained audit log and
-- the transactional outbox. Every table carries tenant_id. The functions below let the engine
-- write a step's checkpoint, its audit entry and its outbox event in one round trip and one
-- commit, and fold the claim of the next task into the commit that finishes the previous one.

CREATE SCHEMA IF NOT EXISTS appliance;

CREATE TABLE appliance.tenants (
    tenant_id  text PRIMARY KEY CHECK (tenant_id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE appliance.tasks (
    task_id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id           text NOT NULL REFERENCES appliance.tenants,
    workflow            text NOT NULL,
    input               jsonb NOT NULL,
    state               text NOT NULL DEFAULT 'queued' CHECK (state IN
                            ('queued', 'running', 'waiting', 'succeeded', 'failed', 'cancelled')),
    wait_reason         text,
    priority            integer NOT NULL DEFAULT 0,
    run_after           timestamptz NOT NULL DEFAULT now(),
    attempts            integer NOT NULL DEFAULT 0,
    max_attempts        integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    idempotency_key     text,
    concurrency_key     text NOT NULL,
    concurrency_limit   integer CHECK (concurrency_limit >= 1),
    lease_owner         text,
    lease_node          text,
    lease_expires_at    timestamptz,
    cancel_requested_by text,
    output              jsonb,
    error               text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX tasks_idempotency_key ON appliance.tasks (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_ready ON appliance.tasks (priority DESC, run_after, task_id)
    WHERE state = 'queued';
CREATE INDEX tasks_running_key ON appliance.tasks (concurrency_key) WHERE state = 'running';
CREATE INDEX tasks_running_lease ON appliance.tasks (lease_expires_at) WHERE state = 'running';
CREATE INDEX tasks_running_node ON appliance.tasks (lease_node) WHERE state = 'running';
CREATE INDEX tasks_tenant ON appliance.tasks (tenant_id, task_id DESC);

CREATE TABLE appliance.steps (
    task_id     bigint NOT NULL REFERENCES appliance.tasks ON DELETE CASCADE,
    position    integer NOT NULL CHECK (position >= 0),
    tenant_id   text NOT NULL,
    name        text NOT NULL,
    output      jsonb NOT NULL,
    attempt     integer NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms double precision NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, position)
);

CREATE TABLE appliance.task_attempts (
    task_id    bigint NOT NULL REFERENCES appliance.tasks ON DELETE CASCADE,
    attempt    integer NOT NULL,
    tenant_id  text NOT NULL,
    node       text NOT NULL,
    worker     text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at   timestamptz,
    outcome    text NOT NULL DEFAULT 'running',
    error      text,
    PRIMARY KEY (task_id, attempt)
);

-- Audit: one hash chain per task ('task:<id>') and one per tenant for actions outside a task
-- ('tenant:<id>'), so writers of different tasks never wait on one another.
CREATE TABLE appliance.audit_entries (
    chain      text NOT NULL,
    seq        bigint NOT NULL CHECK (seq >= 1),
    tenant_id  text NOT NULL,
    task_id    bigint,
    actor      text NOT NULL,
    action     text NOT NULL,
    detail     jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    prev_hash  bytea NOT NULL,
    hash       bytea NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX audit_entries_tenant ON appliance.audit_entries (tenant_id, created_at);

CREATE FUNCTION appliance.audit_hash(
    p_prev bytea, p_chain text, p_seq bigint, p_tenant text, p_task bigint, p_actor text,
    p_action text, p_detail jsonb, p_at timestamptz
) RETURNS bytea LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT sha256(p_prev || convert_to(concat_ws(E'\x1f',
        p_chain, p_seq::text, p_tenant, coalesce(p_task::text, ''), p_actor, p_action,
        p_detail::text,
        to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')), 'UTF8'))
$$;

CREATE FUNCTION appliance.audit_append(
    p_chain text, p_tenant text, p_task bigint, p_actor text, p_action text, p_detail jsonb
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_seq  bigint;
    v_prev bytea;
    v_at   timestamptz := clock_timestamp();
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_chain, 0));
    SELECT seq, hash INTO v_seq, v_prev
      FROM appliance.audit_entries WHERE chain = p_chain ORDER BY seq DESC LIMIT 1;
    v_seq := coalesce(v_seq, 0) + 1;
    v_prev := coalesce(v_prev, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    INSERT INTO appliance.audit_entries
        (chain, seq, tenant_id, task_id, actor, action, detail, created_at, prev_hash, hash)
    VALUES (p_chain, v_seq, p_tenant, p_task, p_actor, p_action, p_detail, v_at, v_prev,
            appliance.audit_hash(v_prev, p_chain, v_seq, p_tenant, p_task, p_actor, p_action,
                                 p_detail, v_at));
    RETURN v_seq;
END $$;

CREATE FUNCTION appliance.audit_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit entries are append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_entries_append_only BEFORE UPDATE OR DELETE ON appliance.audit_entries
    FOR EACH ROW EXECUTE FUNCTION appliance.audit_reject_change();
CREATE TRIGGER audit_entries_no_truncate BEFORE TRUNCATE ON appliance.audit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION appliance.audit_reject_change();

CREATE TABLE appliance.outbox_events (
    event_seq       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid NOT NULL DEFAULT gen_random_uuid(),
    tenant_id       text NOT NULL,
    task_id         bigint,
    type            text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text
);
CREATE INDEX outbox_events_pending ON appliance.outbox_events (event_seq)
    WHERE delivered_at IS NULL;

-- One event and one audit entry about a task, in the caller's transaction.
CREATE FUNCTION appliance.task_event(
    p_task bigint, p_tenant text, p_actor text, p_type text, p_detail jsonb
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM appliance.audit_append('task:' || p_task, p_tenant, p_task, p_actor, p_type, p_detail);
    INSERT INTO appliance.outbox_events (tenant_id, task_id, type, payload)
    VALUES (p_tenant, p_task, p_type, p_detail || jsonb_build_object('task_id', p_task));
END $$;

CREATE FUNCTION appliance.submit_task(
    p_tenant text, p_workflow text, p_input jsonb, p_priority integer, p_run_after timestamptz,
    p_max_attempts integer, p_idempotency_key text, p_concurrency_key text,
    p_concurrency_limit integer, p_actor text
) RETURNS TABLE (task_id bigint, created boolean, workflow text, input jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_id bigint;
BEGIN
    INSERT INTO appliance.tasks AS t (tenant_id, workflow, input, priority, run_after,
        max_attempts, idempotency_key, concurrency_key, concurrency_limit)
    VALUES (p_tenant, p_workflow, p_input, p_priority, coalesce(p_run_after, now()),
        p_max_attempts, p_idempotency_key, coalesce(p_concurrency_key, 'tenant:' || p_tenant),
        p_concurrency_limit)
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

-- Claim up to p_n ready tasks. Tenants past their fair share (p_tenant_share running tasks) are
-- passed over while other work waits, and taken when nothing else is ready (work-conserving);
-- a key with a hard concurrency_limit (an integration) is never run past it.
CREATE FUNCTION appliance.claim_tasks(
    p_worker text, p_node text, p_n integer, p_lease_seconds double precision,
    p_workflows text[], p_tenant_share integer
) RETURNS TABLE (task_id bigint, tenant_id text, workflow text, input jsonb, attempts integer,
                 max_attempts integer, checkpoints jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_full  text[];
    v_hard  text[];
    v_ids   bigint[] := '{}';
    v_cand  record;
    v_row   record;
    v_count integer;
BEGIN
    IF p_n <= 0 THEN
        RETURN;
    END IF;
    SELECT coalesce(array_agg(k.concurrency_key), '{}'),
           coalesce(array_agg(k.concurrency_key) FILTER (WHERE k.lim IS NOT NULL), '{}')
      INTO v_full, v_hard
      FROM (SELECT r.concurrency_key, count(*) AS n, min(r.concurrency_limit) AS lim
              FROM appliance.tasks r WHERE r.state = 'running'
             GROUP BY r.concurrency_key) k
     WHERE k.n >= coalesce(k.lim, p_tenant_share);

    FOR pass IN 1..2 LOOP
        EXIT WHEN cardinality(v_ids) >= p_n;
        FOR v_cand IN
            SELECT t.task_id, t.concurrency_key, t.concurrency_limit FROM appliance.tasks t
             WHERE t.state = 'queued' AND t.run_after <= now()
               AND t.workflow = ANY (p_workflows)
               AND t.concurrency_key <> ALL (CASE WHEN pass = 1 THEN v_full ELSE v_hard END)
               AND t.task_id <> ALL (v_ids)
             ORDER BY t.priority DESC, t.run_after, t.task_id
             LIMIT p_n - cardinality(v_ids)
             FOR UPDATE SKIP LOCKED
        LOOP
            IF v_cand.concurrency_limit IS NOT NULL THEN
                PERFORM pg_advisory_xact_lock(hashtextextended(v_cand.concurrency_key, 1));
                SELECT count(*) INTO v_count FROM appliance.tasks r
                 WHERE r.state = 'running' AND r.concurrency_key = v_cand.concurrency_key;
                CONTINUE WHEN v_count >= v_cand.concurrency_limit;
            END IF;
            v_ids := v_ids || v_cand.task_id;
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
        checkpoints := (SELECT coalesce(jsonb_agg(jsonb_build_array(s.name, s.output)
                                                  ORDER BY s.position), '[]'::jsonb)
                          FROM appliance.steps s WHERE s.task_id = v_row.task_id);
        RETURN NEXT;
    END LOOP;
END $$;

-- The lease check of every write by a worker: the lease is this worker's and this attempt's.
-- The row lock also blocks a takeover until the write commits, and a takeover that committed
-- first makes this fail.
CREATE FUNCTION appliance.hold_lease(p_task bigint, p_worker text, p_attempt integer,
                                     OUT tenant_id text, OUT cancel_requested boolean)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT t.tenant_id, t.cancel_requested_by IS NOT NULL INTO tenant_id, cancel_requested
      FROM appliance.tasks t
     WHERE t.task_id = p_task AND t.lease_owner = p_worker AND t.attempts = p_attempt
       AND t.state = 'running'
       FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'task % attempt % is no longer leased to %', p_task, p_attempt, p_worker
            USING ERRCODE = 'AP409';
    END IF;
END $$;

CREATE FUNCTION appliance.write_step(
    p_task bigint, p_tenant text, p_worker text, p_attempt integer, p_position integer,
    p_name text, p_output jsonb, p_started_at timestamptz, p_duration_ms double precision
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO appliance.steps (task_id, position, tenant_id, name, output, attempt, started_at,
                                 duration_ms)
    VALUES (p_task, p_position, p_tenant, p_name, p_output, p_attempt, p_started_at,
            p_duration_ms);
    PERFORM appliance.task_event(p_task, p_tenant, p_worker, 'step.completed',
        jsonb_build_object('step', p_name, 'position', p_position, 'attempt', p_attempt,
                           'duration_ms', round(p_duration_ms::numeric, 3)));
END $$;

-- One step: checkpoint + audit entry + outbox event, one round trip, one commit.
-- Returns true when a cancel was requested, so the task stops at this step boundary.
CREATE FUNCTION appliance.record_step(
    p_task bigint, p_worker text, p_attempt integer, p_position integer, p_name text,
    p_output jsonb, p_started_at timestamptz, p_duration_ms double precision
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_lease record;
BEGIN
    v_lease := appliance.hold_lease(p_task, p_worker, p_attempt);
    PERFORM appliance.write_step(p_task, v_lease.tenant_id, p_worker, p_attempt, p_position,
                                 p_name, p_output, p_started_at, p_duration_ms);
    RETURN v_lease.cancel_requested;
END $$;

-- End an attempt, with the last step's checkpoint if one is pending, and claim the next tasks
-- in the same commit. p_outcome: succeeded, failed, retry, cancelled, released.
CREATE FUNCTION appliance.finish_task(
    p_task bigint, p_worker text, p_attempt integer, p_outcome text, p_output jsonb,
    p_error text, p_retry_at timestamptz,
    p_position integer, p_name text, p_step_output jsonb, p_started_at timestamptz,
    p_duration_ms double precision,
    p_node text, p_claim integer, p_lease_seconds double precision, p_workflows text[],
    p_tenant_share integer
) RETURNS TABLE (task_id bigint, tenant_id text, workflow text, input jsonb, attempts integer,
                 max_attempts integer, checkpoints jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_lease  record;
    v_state  text;
    v_detail jsonb;
BEGIN
    v_lease := appliance.hold_lease(p_task, p_worker, p_attempt);
    IF p_position IS NOT NULL THEN
        PERFORM appliance.write_step(p_task, v_lease.tenant_id, p_worker, p_attempt, p_position,
                                     p_name, p_step_output, p_started_at, p_duration_ms);
    END IF;
    v_state := CASE p_outcome WHEN 'retry' THEN 'queued' WHEN 'released' THEN 'queued'
                              ELSE p_outcome END;
    UPDATE appliance.tasks t
       SET state = v_state,
           output = CASE WHEN p_outcome = 'succeeded' THEN p_output ELSE t.output END,
           error = CASE WHEN p_outcome IN ('failed', 'retry') THEN p_error ELSE t.error END,
           run_after = CASE WHEN p_outcome = 'retry' THEN p_retry_at
                            WHEN p_outcome = 'released' THEN now() ELSE t.run_after END,
           attempts = CASE WHEN p_outcome = 'released' THEN t.attempts - 1 ELSE t.attempts END,
           finished_at = CASE WHEN v_state = 'queued' THEN NULL ELSE now() END,
           lease_owner = NULL, lease_node = NULL, lease_expires_at = NULL, updated_at = now()
     WHERE t.task_id = p_task;
    UPDATE appliance.task_attempts a SET ended_at = now(), outcome = p_outcome, error = p_error
     WHERE a.task_id = p_task AND a.attempt = p_attempt;
    v_detail := jsonb_build_object('attempt', p_attempt);
    IF p_error IS NOT NULL THEN
        v_detail := v_detail || jsonb_build_object('error', p_error);
    END IF;
    IF p_outcome = 'retry' THEN
        v_detail := v_detail || jsonb_build_object('retry_at', p_retry_at);
    END IF;
    PERFORM appliance.task_event(p_task, v_lease.tenant_id, p_worker,
                                 'task.' || p_outcome, v_detail);
    IF v_state = 'queued' THEN
        PERFORM pg_notify('appliance_tasks', '');
    END IF;
    RETURN QUERY SELECT * FROM appliance.claim_tasks(p_worker, p_node, p_claim, p_lease_seconds,
                                                      p_workflows, p_tenant_share);
END $$;

-- Put back in the queue running tasks whose holder is gone: with p_node, those of a restarted
-- node; with p_tasks, those a worker gave up while Postgres was away; with neither, those whose
-- lease expired. Returns how many.
CREATE FUNCTION appliance.requeue_abandoned(p_node text, p_tasks bigint[], p_actor text)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_task   record;
    v_n      integer := 0;
    v_reason text := CASE WHEN p_tasks IS NOT NULL THEN 'worker_lost_database'
                          WHEN p_node IS NOT NULL THEN 'node_restarted'
                          ELSE 'lease_expired' END;
BEGIN
    FOR v_task IN
        UPDATE appliance.tasks t
           SET state = 'queued', lease_owner = NULL, lease_node = NULL, lease_expires_at = NULL,
               run_after = now(), updated_at = now()
         WHERE t.task_id IN (
                SELECT r.task_id FROM appliance.tasks r
                 WHERE r.state = 'running'
                   AND (CASE WHEN p_tasks IS NOT NULL THEN r.task_id = ANY (p_tasks)
                                                       AND r.lease_owner = p_actor
                             WHEN p_node IS NOT NULL THEN r.lease_node = p_node
                             ELSE r.lease_expires_at < now() END)
                 FOR UPDATE SKIP LOCKED)
        RETURNING t.task_id, t.tenant_id, t.attempts
    LOOP
        UPDATE appliance.task_attempts a SET ended_at = now(), outcome = v_reason
         WHERE a.task_id = v_task.task_id AND a.attempt = v_task.attempts;
        PERFORM appliance.task_event(v_task.task_id, v_task.tenant_id, p_actor, 'task.requeued',
            jsonb_build_object('attempt', v_task.attempts, 'reason', v_reason));
        v_n := v_n + 1;
    END LOOP;
    IF v_n > 0 THEN
        PERFORM pg_notify('appliance_tasks', '');
    END IF;
    RETURN v_n;
END $$;

CREATE FUNCTION appliance.cancel_task(p_task bigint, p_actor text) RETURNS text
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
        RETURN v_task.state;
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

CREATE FUNCTION appliance.retry_task(p_task bigint, p_actor text) RETURNS text
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
        RETURN v_task.state;
    END IF;
    UPDATE appliance.tasks
       SET state = 'queued', attempts = 0, error = NULL, cancel_requested_by = NULL,
           run_after = now(), finished_at = NULL, updated_at = now()
     WHERE task_id = p_task;
    PERFORM appliance.task_event(p_task, v_task.tenant_id, p_actor, 'task.retried', '{}'::jsonb);
    PERFORM pg_notify('appliance_tasks', '');
    RETURN 'queued';
END $$;
