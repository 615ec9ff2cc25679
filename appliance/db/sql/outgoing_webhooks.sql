-- name: enqueue_deliveries
-- One delivery per (endpoint $1[i], event $2[i]) with the event's tenant and task; one already there is left as it is.
INSERT INTO appliance.outgoing_deliveries (endpoint, event_seq, tenant_id, task_id)
SELECT d.endpoint, e.event_seq, e.tenant_id, e.task_id
  FROM unnest($1::text[], $2::bigint[]) AS d (endpoint, event_seq)
  JOIN appliance.outbox_events e ON e.event_seq = d.event_seq
ON CONFLICT (endpoint, event_seq) DO NOTHING;

-- name: fetch_due_deliveries
-- The next $2 due deliveries of endpoint $1 with their events, in event order, none behind an undelivered one of its task that waits to retry (as fetch_pending_events).
WITH waiting AS (
    SELECT w.tenant_id, coalesce(w.task_id, 0) AS stream, min(w.event_seq) AS from_seq
      FROM appliance.outgoing_deliveries w
     WHERE w.endpoint = $1 AND w.delivered_at IS NULL AND w.next_attempt_at > now()
     GROUP BY w.tenant_id, coalesce(w.task_id, 0)
)
SELECT e.event_seq, e.event_id::text AS event_id, e.tenant_id, e.task_id, e.type, e.payload,
       e.created_at, d.attempts
  FROM appliance.outgoing_deliveries d
  JOIN appliance.outbox_events e ON e.event_seq = d.event_seq
 WHERE d.endpoint = $1 AND d.delivered_at IS NULL AND d.next_attempt_at <= now()
   AND NOT EXISTS (SELECT 1 FROM waiting b
                    WHERE b.tenant_id = d.tenant_id AND b.stream = coalesce(d.task_id, 0)
                      AND b.from_seq < d.event_seq)
 ORDER BY d.event_seq
 LIMIT $2;

-- name: mark_deliveries_done
-- Record that endpoint $1 accepted events $2.
UPDATE appliance.outgoing_deliveries
   SET delivered_at = now(), attempts = attempts + 1, last_error = NULL
 WHERE endpoint = $1 AND event_seq = ANY ($2::bigint[]) AND delivered_at IS NULL;

-- name: mark_deliveries_failed
-- Record a failed delivery of events $2 to endpoint $1: error $3 and a retry after $4 seconds, each per event.
UPDATE appliance.outgoing_deliveries d
   SET attempts = d.attempts + 1, last_error = f.error,
       next_attempt_at = now() + make_interval(secs => f.delay)
  FROM unnest($2::bigint[], $3::text[], $4::double precision[]) AS f (event_seq, error, delay)
 WHERE d.endpoint = $1 AND d.event_seq = f.event_seq AND d.delivered_at IS NULL;

-- name: count_webhook_backlog
-- Per endpoint: deliveries not made yet, those that failed at least once, the oldest one's age, the newest error.
SELECT d.endpoint, count(*) AS pending, count(*) FILTER (WHERE d.attempts > 0) AS failing,
       extract(epoch FROM now() - min(d.created_at))::double precision AS oldest_seconds,
       (SELECT l.last_error FROM appliance.outgoing_deliveries l
         WHERE l.endpoint = d.endpoint AND l.delivered_at IS NULL AND l.last_error IS NOT NULL
         ORDER BY l.next_attempt_at DESC LIMIT 1) AS last_error
  FROM appliance.outgoing_deliveries d
 WHERE d.delivered_at IS NULL
 GROUP BY d.endpoint
 ORDER BY d.endpoint;
