-- name: request_approval
-- Ask for approval of a task's step (idempotent per task and step): 'created:<id>', 'exists:<id>', 'conflict:<id>', 'ended:<state>' or null.
SELECT appliance.request_approval($1, $2, $3, $4, $5, $6::text::jsonb, $7, $8, $9, $10, $11);

-- name: vote_approval
-- One approver's vote, deciding the request when it settles it: see appliance.vote_approval.
SELECT appliance.vote_approval($1, $2, $3, $4, $5);

-- name: expire_approvals
-- Expire the pending requests past their deadline and resume their tasks; returns how many.
SELECT appliance.expire_approvals();

-- name: get_approval
-- One request.
SELECT approval_id, tenant_id, task_id, step_key, tool, action_class, arguments, reason,
       policy_version, required_approvers, state, deadline, created_at, decided_at,
       decision_reason
  FROM appliance.approvals WHERE approval_id = $1;

-- name: list_approvals
-- Requests of a tenant ($1) and/or a task ($2), null for any; pending only ($3) soonest deadline first, else newest first.
SELECT approval_id, tenant_id, task_id, step_key, tool, action_class, arguments, reason,
       policy_version, required_approvers, state, deadline, created_at, decided_at,
       decision_reason
  FROM appliance.approvals
 WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::bigint IS NULL OR task_id = $2)
   AND (NOT $3::boolean OR state = 'pending')
 ORDER BY CASE WHEN $3::boolean THEN deadline END, approval_id DESC
 LIMIT $4;

-- name: list_approval_votes
-- The votes on requests $1, in the order they were cast.
SELECT approval_id, approver, declared_as, decision, reason, voted_at
  FROM appliance.approval_votes
 WHERE approval_id = ANY ($1::bigint[])
 ORDER BY approval_id, voted_at, approver;
