-- name: list_task_model_calls
-- The ledger rows of task $1 in the order the calls started: usage, cost and latency.
SELECT call_id, position, agent, agent_version, model, started_at, latency_ms, input_tokens,
       cache_creation_input_tokens, cache_read_input_tokens, output_tokens, cost_usd,
       uncached_cost_usd
  FROM appliance.model_calls
 WHERE task_id = $1
 ORDER BY started_at, call_id;

-- name: list_task_leases
-- The secret leases granted to task $1's steps, oldest first (never a value: none is stored).
SELECT step_key, integration, name, granted_at, expires_at, redeemed_at
  FROM appliance.leases
 WHERE task_id = $1
 ORDER BY granted_at;

-- name: get_task_delivery
-- The webhook delivery that started task $1, if one did: its source and delivery id.
SELECT source, delivery_id, received_at
  FROM appliance.webhook_deliveries
 WHERE task_id = $1
 LIMIT 1;

-- name: find_task_chain_breaks
-- Entries of task $1's chain whose hash, sequence or link does not verify, first first; with the chain's length.
SELECT e.seq, e.reason, e.entries FROM (
    SELECT e.seq, count(*) OVER () AS entries,
           CASE
               WHEN e.hash <> appliance.audit_hash(e.prev_hash, e.chain, e.seq, e.tenant_id,
                                                   e.task_id, e.actor, e.action, e.detail,
                                                   e.created_at)
                   THEN 'its content does not match its hash (the entry was altered)'
               WHEN e.seq <> coalesce(lag(e.seq) OVER w, 0) + 1
                   THEN 'entries before it are missing (expected seq '
                        || (coalesce(lag(e.seq) OVER w, 0) + 1) || ')'
               WHEN e.prev_hash <> coalesce(lag(e.hash) OVER w, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
                   THEN 'its link does not match the hash of the entry before it'
           END AS reason
      FROM appliance.audit_entries e
     WHERE e.chain = 'task:' || $1::bigint
    WINDOW w AS (ORDER BY e.seq)
) e
 ORDER BY e.reason IS NULL, e.seq
 LIMIT 1;

-- name: count_node_load
-- Per node: the running tasks it holds, and the attempts it lost to a takeover (lease expired, node restarted) since $1.
SELECT n.node,
       (SELECT count(*) FROM appliance.tasks t
         WHERE t.state = 'running' AND t.lease_node = n.node) AS tasks_held,
       (SELECT count(*) FROM appliance.task_attempts a
         WHERE a.node = n.node AND a.outcome IN ('lease_expired', 'node_restarted')
           AND a.started_at >= $1) AS takeovers
  FROM appliance.nodes n
 ORDER BY n.node;

-- name: list_hourly_load
-- Per hour since $2 (UTC, whole hours), for tenants $1: attempts started, the seconds attempts ran within the hour, tasks ended.
WITH hours AS (
    SELECT hour FROM generate_series(date_trunc('hour', $2::timestamptz), now(),
                                     interval '1 hour') AS h (hour)
), runs AS (
    SELECT a.started_at, coalesce(a.ended_at, now()) AS ended_at
      FROM appliance.task_attempts a
     WHERE a.tenant_id = ANY ($1::text[]) AND coalesce(a.ended_at, now()) > $2::timestamptz
), ends AS (
    SELECT date_trunc('hour', t.finished_at) AS hour, count(*) AS ended
      FROM appliance.tasks t
     WHERE t.tenant_id = ANY ($1::text[]) AND t.finished_at >= $2::timestamptz
     GROUP BY 1
)
SELECT h.hour,
       count(r.started_at) FILTER (WHERE r.started_at >= h.hour) AS attempts,
       coalesce(sum(extract(epoch FROM least(r.ended_at, h.hour + interval '1 hour')
                                       - greatest(r.started_at, h.hour)))
                    FILTER (WHERE r.started_at IS NOT NULL), 0)::double precision
           AS busy_seconds,
       coalesce(max(e.ended), 0) AS ended
  FROM hours h
  LEFT JOIN runs r ON r.started_at < h.hour + interval '1 hour' AND r.ended_at > h.hour
  LEFT JOIN ends e ON e.hour = h.hour
 GROUP BY h.hour
 ORDER BY h.hour;

-- name: report_cost_cells
-- The ledger of tenants $1 from day $2 (UTC) on, summed per tenant, agent version, model and day (the cells every `appliance cost` grouping adds up).
SELECT c.tenant_id, c.agent, c.agent_version, c.model,
       (c.started_at AT TIME ZONE 'UTC')::date AS day,
       count(*) AS calls,
       sum(c.input_tokens) AS input_tokens,
       sum(c.cache_creation_input_tokens) AS cache_creation_input_tokens,
       sum(c.cache_read_input_tokens) AS cache_read_input_tokens,
       sum(c.output_tokens) AS output_tokens,
       sum(c.cost_usd) AS cost_usd,
       sum(c.uncached_cost_usd) AS uncached_cost_usd
  FROM appliance.model_calls c
 WHERE c.tenant_id = ANY ($1::text[])
   AND c.started_at >= $2::date::timestamp AT TIME ZONE 'UTC'
 GROUP BY 1, 2, 3, 4, 5;
