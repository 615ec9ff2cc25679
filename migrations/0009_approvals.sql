-- Human approvals. A step that needs a person's approval asks once per (task, step): asking
-- again returns the same request, whatever its state. While the request is pending the task
-- parks (state `waiting`, wait_reason `approval:<id>: ...`), holding no worker. Votes come from
-- people; any deny denies, `required_approvers` approvals from distinct approvers approve, and a
-- request still pending at its deadline expires (a timeout denies). When a request leaves
-- `pending`, the same transaction puts its task back in the queue (resume_waiting with the
-- prefix `approval:<id>:`; the colon keeps approval 1 from resuming the tasks of approval 12).
--
-- Audit: the request is appended to the task's chain by the step that asks (it locks the task
-- row, as every writer of a task chain does). Votes and decisions go to the tenant's chain: they
-- are acts of people (or of the timeout) about a request, made while the task waits and no lease
-- holder exists; the tenant chain is serialised by its advisory lock, so a decision never has to
-- lock the task row of a worker that may still be finishing the attempt that asked. Each entry
-- carries the task id. The task's own chain still records `task.resumed` (resume_waiting locks
-- the task row), with the decider as its actor.

CREATE TABLE appliance.approvals (
    approval_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id          text NOT NULL REFERENCES appliance.tenants,
    task_id            bigint NOT NULL REFERENCES appliance.tasks ON DELETE CASCADE,
    step_key           text NOT NULL CHECK (length(step_key) BETWEEN 1 AND 200),
    tool               text NOT NULL CHECK (length(tool) BETWEEN 1 AND 200),
    action_class       text NOT NULL CHECK (action_class IN
                           ('read', 'write', 'destructive', 'financial', 'customer_facing')),
    arguments          jsonb NOT NULL,
    reason             text NOT NULL CHECK (length(reason) >= 1),
    policy_version     integer CHECK (policy_version >= 1),
    required_approvers integer NOT NULL CHECK (required_approvers >= 1),
    state              text NOT NULL DEFAULT 'pending' CHECK (state IN
                           ('pending', 'approved', 'denied', 'expired')),
    deadline           timestamptz NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    decided_at         timestamptz,
    decision_reason    text,
    UNIQUE (task_id, step_key),
    CHECK ((state = 'pending') = (decided_at IS NULL))
);

-- The sweep's scan for overdue requests and the listing of pending ones.
CREATE INDEX approvals_pending ON appliance.approvals (deadline) WHERE state = 'pending';

-- One vote per approver per request. `approver` is the verified principal (the OS user behind
-- the CLI, the tailnet login behind the console); `declared_as` is a name the person gave.
CREATE TABLE appliance.approval_votes (
    approval_id bigint NOT NULL REFERENCES appliance.approvals ON DELETE CASCADE,
    approver    text NOT NULL CHECK (length(approver) BETWEEN 1 AND 200),
    tenant_id   text NOT NULL,
    declared_as text CHECK (length(declared_as) BETWEEN 1 AND 200),
    decision    text NOT NULL CHECK (decision IN ('approve', 'deny')),
    reason      text,
    voted_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (approval_id, approver)
);

-- Ask for approval of one step of a task: 'created:<id>', 'exists:<id>' (the same request was
-- made before), 'conflict:<id>' (the step asked before for another tool, class or arguments),
-- 'ended:<state>' (the task is over), or NULL (no such task of that tenant).
CREATE FUNCTION appliance.request_approval(
    p_tenant text, p_task bigint, p_step_key text, p_tool text, p_action_class text,
    p_arguments jsonb, p_reason text, p_policy_version integer, p_required integer,
    p_timeout interval, p_actor text
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_state    text;
    v_existing record;
    v_id       bigint;
    v_deadline timestamptz := now() + p_timeout;
BEGIN
    -- The row lock serialises this writer of the task's chain with the others (claim, cancel,
    -- resume) and makes a second request for the same step wait and then find the first.
    SELECT t.state INTO v_state FROM appliance.tasks t
     WHERE t.task_id = p_task AND t.tenant_id = p_tenant FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT a.approval_id, a.tool, a.action_class, a.arguments INTO v_existing
      FROM appliance.approvals a WHERE a.task_id = p_task AND a.step_key = p_step_key;
    IF FOUND THEN
        IF v_existing.tool = p_tool AND v_existing.action_class = p_action_class
           AND v_existing.arguments = p_arguments THEN
            RETURN 'exists:' || v_existing.approval_id;
        END IF;
        RETURN 'conflict:' || v_existing.approval_id;
    END IF;
    IF v_state IN ('succeeded', 'failed', 'cancelled') THEN
        RETURN 'ended:' || v_state;
    END IF;
    INSERT INTO appliance.approvals (tenant_id, task_id, step_key, tool, action_class, arguments,
                                     reason, policy_version, required_approvers, deadline)
    VALUES (p_tenant, p_task, p_step_key, p_tool, p_action_class, p_arguments, p_reason,
            p_policy_version, p_required, v_deadline)
    RETURNING approval_id INTO v_id;
    PERFORM appliance.task_event(p_task, p_tenant, p_actor, 'approval.requested',
        jsonb_build_object('approval_id', v_id, 'step_key', p_step_key, 'tool', p_tool,
                           'action_class', p_action_class, 'arguments', p_arguments,
                           'reason', p_reason, 'policy_version', p_policy_version,
                           'required_approvers', p_required, 'deadline', v_deadline));
    RETURN 'created:' || v_id;
END $$;

-- Move a pending request (locked by the caller) to its final state: the decision is audited in
-- the tenant's chain, announced in the outbox, and the task waiting for it is queued again.
CREATE FUNCTION appliance.settle_approval(
    p_approval bigint, p_state text, p_reason text, p_actor text
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_a      record;
    v_detail jsonb;
BEGIN
    UPDATE appliance.approvals a
       SET state = p_state, decided_at = now(), decision_reason = p_reason
     WHERE a.approval_id = p_approval
    RETURNING a.approval_id, a.tenant_id, a.task_id, a.step_key, a.tool, a.action_class
         INTO v_a;
    v_detail := jsonb_build_object(
        'approval_id', v_a.approval_id, 'state', p_state, 'reason', p_reason,
        'step_key', v_a.step_key, 'tool', v_a.tool, 'action_class', v_a.action_class,
        'approvers', (SELECT coalesce(jsonb_agg(v.approver ORDER BY v.voted_at), '[]'::jsonb)
                        FROM appliance.approval_votes v
                       WHERE v.approval_id = p_approval AND v.decision = 'approve'));
    PERFORM appliance.audit_append('tenant:' || v_a.tenant_id, v_a.tenant_id, v_a.task_id,
                                   p_actor, 'approval.decided', v_detail);
    INSERT INTO appliance.outbox_events (tenant_id, task_id, type, payload)
    VALUES (v_a.tenant_id, v_a.task_id, 'approval.decided',
            v_detail || jsonb_build_object('task_id', v_a.task_id));
    PERFORM appliance.resume_waiting(v_a.tenant_id, 'approval:' || v_a.approval_id || ':',
                                     p_actor);
END $$;

-- One person's vote: 'pending' (recorded; more approvals needed), 'approved', 'denied',
-- 'duplicate' (this approver voted already; nothing recorded), 'expired' (the deadline had
-- passed: the request expires now instead), 'refused:<state>' (decided before), or NULL (no
-- such request).
CREATE FUNCTION appliance.vote_approval(
    p_approval bigint, p_approver text, p_declared_as text, p_approve boolean, p_reason text
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_a         record;
    v_approvals integer;
    v_decision  text := CASE WHEN p_approve THEN 'approve' ELSE 'deny' END;
BEGIN
    SELECT a.tenant_id, a.task_id, a.state, a.deadline, a.required_approvers INTO v_a
      FROM appliance.approvals a WHERE a.approval_id = p_approval FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_a.state <> 'pending' THEN
        RETURN 'refused:' || v_a.state;
    END IF;
    IF v_a.deadline <= now() THEN
        PERFORM appliance.settle_approval(p_approval, 'expired', 'no decision before the deadline',
                                          'approvals:timeout');
        RETURN 'expired';
    END IF;
    INSERT INTO appliance.approval_votes (approval_id, approver, tenant_id, declared_as,
                                          decision, reason)
    VALUES (p_approval, p_approver, v_a.tenant_id, p_declared_as, v_decision, p_reason)
    ON CONFLICT (approval_id, approver) DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'duplicate';
    END IF;
    PERFORM appliance.audit_append('tenant:' || v_a.tenant_id, v_a.tenant_id, v_a.task_id,
        p_approver, 'approval.voted',
        jsonb_build_object('approval_id', p_approval, 'decision', v_decision,
                           'reason', p_reason, 'declared_as', p_declared_as));
    IF NOT p_approve THEN
        PERFORM appliance.settle_approval(p_approval, 'denied', p_reason, p_approver);
        RETURN 'denied';
    END IF;
    SELECT count(*) INTO v_approvals FROM appliance.approval_votes v
     WHERE v.approval_id = p_approval AND v.decision = 'approve';
    IF v_approvals < v_a.required_approvers THEN
        RETURN 'pending';
    END IF;
    PERFORM appliance.settle_approval(p_approval, 'approved', p_reason, p_approver);
    RETURN 'approved';
END $$;

-- Expire every pending request past its deadline (a timeout denies); returns how many. A
-- request whose row a voter holds is skipped: that vote sees the deadline and expires it.
CREATE FUNCTION appliance.expire_approvals() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
    v_n  integer := 0;
BEGIN
    FOR v_id IN
        SELECT a.approval_id FROM appliance.approvals a
         WHERE a.state = 'pending' AND a.deadline <= now()
         ORDER BY a.deadline, a.approval_id
           FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM appliance.settle_approval(v_id, 'expired', 'no decision before the deadline',
                                          'approvals:timeout');
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
END $$;

-- A decision can come while the step that asked is still running, before its attempt parks the
-- task: resume_waiting then finds nothing to resume. So when a task parks for an approval, this
-- check runs at the commit of the parking transaction: if the request is no longer pending, the
-- task is queued again at once. The share lock waits for a decision being made at that moment;
-- whichever commits second sees the other (a decision made first is seen here, a park made
-- first is seen by the decision's resume_waiting).
CREATE FUNCTION appliance.resume_if_decided() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_id    bigint := substring(NEW.wait_reason FROM '^approval:(\d{1,18}):')::bigint;
    v_state text;
BEGIN
    IF v_id IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT a.state INTO v_state FROM appliance.approvals a
     WHERE a.approval_id = v_id FOR SHARE;
    IF v_state <> 'pending' THEN
        PERFORM appliance.resume_waiting(NEW.tenant_id, 'approval:' || v_id || ':',
                                         'approval:' || v_id);
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER tasks_resume_if_decided AFTER UPDATE OF state ON appliance.tasks
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.state = 'waiting' AND NEW.wait_reason LIKE 'approval:%')
    EXECUTE FUNCTION appliance.resume_if_decided();
