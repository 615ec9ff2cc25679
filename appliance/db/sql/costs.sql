-- name: get_prices_at
-- The price of each token category of model $1 in effect on date $2 (a dated id such as claude-3-haiku-20240307 falls back to the undated one).
SELECT DISTINCT ON (p.category) p.category, p.usd_per_mtok, p.effective_from
  FROM appliance.prices p
 WHERE p.model IN ($1::text, regexp_replace($1::text, '-[0-9]{8}$', ''))
   AND p.effective_from <= $2::date
 ORDER BY p.category, p.model = $1::text DESC, p.effective_from DESC;

-- name: insert_price
-- Add the price of model $1's category $2 from date $3 on; no row when that date already has one.
INSERT INTO appliance.prices (model, category, effective_from, usd_per_mtok, source)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (model, category, effective_from) DO NOTHING
RETURNING model, category, effective_from, usd_per_mtok, source, created_at;

-- name: list_prices
-- Every price row (the history included), of model $1 or of all models when $1 is null.
SELECT model, category, effective_from, usd_per_mtok, source, created_at
  FROM appliance.prices
 WHERE $1::text IS NULL OR model = $1::text
 ORDER BY model, effective_from, array_position(
     ARRAY['input', 'cache_write_5m', 'cache_write_1h', 'cache_read', 'output'], category);

-- name: record_model_call
-- Add a call to the ledger; no row when task $2 is not a task of tenant $1.
INSERT INTO appliance.model_calls
    (tenant_id, task_id, position, agent, agent_version, model, request_id, started_at,
     latency_ms, input_tokens, cache_creation_input_tokens, cache_write_5m_tokens,
     cache_write_1h_tokens, cache_read_input_tokens, output_tokens, cost_usd, uncached_cost_usd,
     cache_note, context, context_tokens, context_expected_usd, context_other_usd)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
       $20, $21, $22
 WHERE $2::bigint IS NULL
    OR EXISTS (SELECT 1 FROM appliance.tasks t WHERE t.task_id = $2 AND t.tenant_id = $1)
RETURNING call_id, tenant_id, task_id, position, agent, agent_version, model, request_id,
          started_at, latency_ms, input_tokens, cache_creation_input_tokens,
          cache_write_5m_tokens, cache_write_1h_tokens, cache_read_input_tokens, output_tokens,
          cost_usd, uncached_cost_usd, cache_note, context, context_tokens,
          context_expected_usd, context_other_usd, recorded_at;

-- name: count_agent_calls
-- How many calls agent $2 of tenant $1 made from $3 on (any version).
SELECT count(*) FROM appliance.model_calls c
 WHERE c.tenant_id = $1 AND c.agent = $2 AND c.started_at >= $3;

-- name: report_costs
-- Calls, token counters, cost and realised cache saving grouped by $1 (tenant, agent, model, day, task or all), of tenant $2 (all when null), from date $3 (UTC) on.
SELECT CASE WHEN $1::text IN ('tenant', 'agent', 'task') THEN c.tenant_id END AS tenant_id,
       CASE WHEN $1::text = 'agent' THEN c.agent END AS agent,
       CASE WHEN $1::text = 'agent' THEN c.agent_version END AS agent_version,
       CASE WHEN $1::text = 'model' THEN c.model END AS model,
       CASE WHEN $1::text = 'day' THEN (c.started_at AT TIME ZONE 'UTC')::date END AS day,
       CASE WHEN $1::text = 'task' THEN c.task_id END AS task_id,
       count(*) AS calls,
       sum(c.input_tokens) AS input_tokens,
       sum(c.cache_creation_input_tokens) AS cache_creation_input_tokens,
       sum(c.cache_write_5m_tokens) AS cache_write_5m_tokens,
       sum(c.cache_write_1h_tokens) AS cache_write_1h_tokens,
       sum(c.cache_read_input_tokens) AS cache_read_input_tokens,
       sum(c.output_tokens) AS output_tokens,
       sum(c.cost_usd) AS cost_usd,
       sum(c.uncached_cost_usd) AS uncached_cost_usd,
       sum(c.uncached_cost_usd) - sum(c.cost_usd) AS saving_usd,
       CASE WHEN sum(c.uncached_cost_usd) > 0
            THEN (sum(c.uncached_cost_usd) - sum(c.cost_usd)) / sum(c.uncached_cost_usd)
       END AS saving_fraction
  FROM appliance.model_calls c
 WHERE ($2::text IS NULL OR c.tenant_id = $2::text)
   AND ($3::date IS NULL OR c.started_at >= $3::date::timestamp AT TIME ZONE 'UTC')
 GROUP BY 1, 2, 3, 4, 5, 6
 ORDER BY 1, 2, 3, 4, 5, 6;

-- name: upsert_budget
-- Set tenant $1's budget of scope $2 (task $3, or every task when null) to $4 USD, audited in the tenant's chain; no row when task $3 is not a task of tenant $1.
WITH upserted AS (
    INSERT INTO appliance.budgets AS b (tenant_id, scope, task_id, usd_limit, set_by)
    SELECT $1, $2, $3, $4, $5
     WHERE $3::bigint IS NULL
        OR EXISTS (SELECT 1 FROM appliance.tasks t WHERE t.task_id = $3 AND t.tenant_id = $1)
    ON CONFLICT (tenant_id, scope, task_key)
    DO UPDATE SET usd_limit = excluded.usd_limit, set_by = excluded.set_by, updated_at = now()
    RETURNING b.tenant_id, b.scope, b.task_id, b.usd_limit, b.set_by, b.updated_at
)
SELECT u.tenant_id, u.scope, u.task_id, u.usd_limit, u.set_by, u.updated_at,
       appliance.audit_append('tenant:' || u.tenant_id, u.tenant_id, u.task_id, $5::text,
                              'budget.set', jsonb_build_object('scope', u.scope,
                                  'task_id', u.task_id, 'usd_limit', u.usd_limit)) AS audit_seq
  FROM upserted u;

-- name: list_budgets
-- Tenant $1's budgets: the month's first, then the default per task, then each task's.
SELECT tenant_id, scope, task_id, usd_limit, set_by, updated_at
  FROM appliance.budgets
 WHERE tenant_id = $1
 ORDER BY scope, task_key;

-- name: get_budget_spend
-- The budgets that bound a call of tenant $1 in task $2 (its own task budget, else the tenant's default) with what the ledger shows spent against each: this UTC month's calls, the task's calls.
WITH month AS (
    SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AS start
)
SELECT b.scope,
       CASE WHEN b.scope = 'task' THEN $2::bigint END AS task_id,
       b.usd_limit,
       CASE WHEN b.scope = 'month' THEN
                (SELECT coalesce(sum(c.cost_usd), 0) FROM appliance.model_calls c, month m
                  WHERE c.tenant_id = $1::text
                    AND c.started_at >= m.start AT TIME ZONE 'UTC'
                    AND c.started_at < (m.start + interval '1 month') AT TIME ZONE 'UTC')
            ELSE
                (SELECT coalesce(sum(c.cost_usd), 0) FROM appliance.model_calls c
                  WHERE c.task_id = $2::bigint AND c.tenant_id = $1::text)
       END AS spent_usd
  FROM appliance.budgets b
 WHERE b.tenant_id = $1::text
   AND (b.scope = 'month'
        OR ($2::bigint IS NOT NULL
            AND b.task_key = (SELECT max(o.task_key) FROM appliance.budgets o
                               WHERE o.tenant_id = $1::text AND o.scope = 'task'
                                 AND o.task_key IN (0, $2::bigint))))
 ORDER BY b.scope;
