-- name: append_task_audit
-- An entry in task $1's chain written by its lease holder ($2, attempt $3); NULL when the lease is not held.
SELECT appliance.task_audit($1, $2, $3, $4, $5::text::jsonb) AS seq;

-- name: find_tool_entries
-- The tool entries of task $1 for idempotency key $2, oldest first (intent, result, in-doubt decisions).
SELECT seq, action, detail::text AS detail, created_at
  FROM appliance.audit_entries
 WHERE chain = 'task:' || $1::bigint AND action LIKE 'tool.%'
   AND detail ->> 'idempotency_key' = $2
 ORDER BY seq;

-- name: grant_lease
-- A lease on secret $6 of integration $5 for task $2's step $3 (lease holder $7, attempt $8), audited in the task's chain; no row when the lease on the task is not held.
WITH holder AS (
    SELECT t.tenant_id FROM appliance.tasks t
     WHERE t.task_id = $2 AND t.lease_owner = $7 AND t.attempts = $8 AND t.state = 'running'
       AND t.tenant_id = $1
), granted AS (
    INSERT INTO appliance.leases
        (tenant_id, task_id, step_key, workflow, integration, name, expires_at)
    SELECT h.tenant_id, $2, $3, $4, $5, $6,
           clock_timestamp() + make_interval(secs => $9::double precision)
      FROM holder h
    RETURNING lease_id, tenant_id, expires_at
)
SELECT g.lease_id, g.expires_at,
       appliance.audit_append('task:' || $2, g.tenant_id, $2, $7, 'lease.granted',
           jsonb_build_object('lease_id', g.lease_id, 'step', $3::text, 'workflow', $4::text,
                              'integration', $5::text, 'name', $6::text,
                              'expires_at', g.expires_at)) AS seq
  FROM granted g;

-- name: redeem_lease
-- Spend lease $1 for the call that holds it (tenant $2, task $3, step $4, workflow $5): once, before it expires; no row otherwise.
UPDATE appliance.leases
   SET redeemed_at = clock_timestamp()
 WHERE lease_id = $1 AND tenant_id = $2 AND task_id = $3 AND step_key = $4 AND workflow = $5
   AND redeemed_at IS NULL AND expires_at > clock_timestamp()
RETURNING lease_id, integration, name;

-- name: get_lease
-- One lease, to say why it cannot be redeemed.
SELECT lease_id, tenant_id, task_id, step_key, workflow, integration, name, granted_at,
       expires_at, redeemed_at, clock_timestamp() AS now
  FROM appliance.leases WHERE lease_id = $1;

-- name: get_task_summary
-- A task's public fields; run in a tenant transaction, where row-level security hides other tenants' tasks.
SELECT task_id, tenant_id, workflow, state, created_at
  FROM appliance.tasks WHERE task_id = $1;

-- name: get_task_spend
-- What task $1 of tenant $2 has spent on model calls so far (the ledger), for the policy's guardrail.
SELECT coalesce(sum(cost_usd), 0) AS spent_usd
  FROM appliance.model_calls WHERE task_id = $1 AND tenant_id = $2;
