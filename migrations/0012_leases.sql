-- Leases and the audit entries a tool call writes around its external effect.
--
-- A lease grants one secret to one tool call: single use (`redeemed_at` is set once), short
-- lived (at most 60 s, enforced here as well as in the code), bound to the task, the step, the
-- tenant, the workflow and the integration it was granted for. The value itself is never
-- stored here: redeeming reads it from the vault inside the control plane.
--
-- `task_audit` appends an entry to a task's chain for its lease holder only (the same check
-- `record_step` makes), so the intent entry before an external write is committed by the one
-- process allowed to write that chain; when the check fails nothing is written and the caller
-- gets no row, which stops the write.

CREATE TABLE appliance.leases (
    lease_id     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    text NOT NULL REFERENCES appliance.tenants,
    task_id      bigint NOT NULL,
    step_key     text NOT NULL,
    workflow     text NOT NULL,
    integration  text NOT NULL,
    name         text NOT NULL,
    granted_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at   timestamptz NOT NULL,
    redeemed_at  timestamptz,
    CHECK (expires_at > granted_at AND expires_at <= granted_at + interval '60 seconds')
);

CREATE INDEX leases_task ON appliance.leases (task_id);

CREATE FUNCTION appliance.task_audit(
    p_task bigint, p_worker text, p_attempt integer, p_action text, p_detail jsonb
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_tenant text;
BEGIN
    SELECT t.tenant_id INTO v_tenant FROM appliance.tasks t
     WHERE t.task_id = p_task AND t.lease_owner = p_worker AND t.attempts = p_attempt
       AND t.state = 'running'
       FOR SHARE;
    IF v_tenant IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN appliance.audit_append('task:' || p_task, v_tenant, p_task, p_worker, p_action,
                                  p_detail);
END $$;

-- Leases are tenant rows: row-level security like every other tenant table (migration 0011).
SELECT appliance.enforce_tenant_isolation();
