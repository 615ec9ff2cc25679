-- name: read_metrics
-- Everything /metrics reports from the database in one statement (one snapshot), each part as JSON rows (sums of money as text, exact); $1: the task-duration bucket bounds in seconds, ascending.
WITH bounds AS (
    -- width_bucket over the negated bounds counts the bounds >= a duration, so n minus it is
    -- the number of bounds below it: the index of the first bucket (`le`) that holds it.
    SELECT cardinality($1::double precision[]) AS n,
           array_agg(-b ORDER BY -b) AS negated
      FROM unnest($1::double precision[]) AS b
),
tasks AS (
    -- One scan of the tasks: counts by state, and for those that ended after a claim, their
    -- duration from the first claim to the end, by bucket (NULL for the others).
    SELECT t.tenant_id, t.workflow, t.state,
           b.n - width_bucket(-d.seconds, b.negated) AS bucket,
           count(*) AS tasks,
           coalesce(sum(d.seconds), 0) AS seconds
      FROM appliance.tasks t
     CROSS JOIN bounds b
     CROSS JOIN LATERAL (
            SELECT CASE WHEN t.state IN ('succeeded', 'failed', 'cancelled')
                             AND t.started_at IS NOT NULL AND t.finished_at IS NOT NULL
                        THEN extract(epoch FROM t.finished_at - t.started_at)::double precision
                   END AS seconds
          ) AS d
     GROUP BY 1, 2, 3, 4
),
queue AS (
    -- Ready to run now (a delayed task or a retry waiting for its backoff is not in the queue).
    SELECT q.tenant_id, q.workflow, count(*) AS tasks,
           extract(epoch FROM now() - min(q.run_after))::double precision AS oldest_seconds
      FROM appliance.tasks q
     WHERE q.state = 'queued' AND q.run_after <= now()
     GROUP BY 1, 2
),
attempts AS (
    -- Every claim starts an attempt; an attempt ended `lease_expired` was taken over by another
    -- worker, one ended `node_restarted` was taken back by its node after a crash.
    SELECT a.tenant_id, count(*) AS claims,
           count(*) FILTER (WHERE a.outcome = 'lease_expired') AS takeovers,
           count(*) FILTER (WHERE a.outcome = 'node_restarted') AS recoveries
      FROM appliance.task_attempts a
     GROUP BY 1
),
outbox AS (
    SELECT count(*) AS pending, count(*) FILTER (WHERE o.attempts > 0) AS failing,
           coalesce(extract(epoch FROM now() - min(o.created_at))::double precision, 0)
               AS oldest_seconds
      FROM appliance.outbox_events o
     WHERE o.delivered_at IS NULL
),
calls AS (
    SELECT c.tenant_id, coalesce(c.agent, '') AS agent, c.model, count(*) AS calls,
           sum(c.input_tokens) AS input_tokens,
           sum(c.cache_creation_input_tokens) AS cache_write_tokens,
           sum(c.cache_read_input_tokens) AS cache_read_tokens,
           sum(c.output_tokens) AS output_tokens,
           sum(c.cost_usd)::text AS cost_usd,
           (sum(c.uncached_cost_usd) - sum(c.cost_usd))::text AS saving_usd
      FROM appliance.model_calls c
     GROUP BY 1, 2, 3
),
month AS (
    SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AS start
),
budgets AS (
    -- Each tenant's monthly budget and this UTC month's spend against it (as get_budget_spend).
    SELECT b.tenant_id, b.usd_limit::text AS usd_limit,
           (SELECT coalesce(sum(c.cost_usd), 0)::text FROM appliance.model_calls c
             WHERE c.tenant_id = b.tenant_id
               AND c.started_at >= m.start AT TIME ZONE 'UTC'
               AND c.started_at < (m.start + interval '1 month') AT TIME ZONE 'UTC') AS spent_usd
      FROM appliance.budgets b, month m
     WHERE b.scope = 'month'
),
webhooks AS (
    -- Each outgoing webhook endpoint's deliveries not made yet.
    SELECT d.endpoint, count(*) AS pending, count(*) FILTER (WHERE d.attempts > 0) AS failing,
           extract(epoch FROM now() - min(d.created_at))::double precision AS oldest_seconds
      FROM appliance.outgoing_deliveries d
     WHERE d.delivered_at IS NULL
     GROUP BY 1
),
approvals AS (
    SELECT p.tenant_id, count(*) AS pending,
           extract(epoch FROM now() - min(p.created_at))::double precision AS oldest_seconds
      FROM appliance.approvals p
     WHERE p.state = 'pending'
     GROUP BY 1
)
SELECT (SELECT coalesce(json_agg(x), '[]') FROM tasks x) AS tasks,
       (SELECT coalesce(json_agg(x), '[]') FROM queue x) AS queue,
       (SELECT coalesce(json_agg(x), '[]') FROM attempts x) AS attempts,
       (SELECT row_to_json(x) FROM outbox x) AS outbox,
       (SELECT coalesce(json_agg(x), '[]') FROM calls x) AS calls,
       (SELECT coalesce(json_agg(x), '[]') FROM budgets x) AS budgets,
       (SELECT coalesce(json_agg(x), '[]') FROM approvals x) AS approvals,
       (SELECT coalesce(json_agg(x), '[]') FROM webhooks x) AS webhooks;
