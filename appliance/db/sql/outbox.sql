-- name: try_lock_relay
-- Take the session-level advisory lock of the one shipping relay; true when this session holds it.
SELECT pg_try_advisory_lock($1);

-- name: unlock_relay
-- Release the relay lock (closing the session releases it too).
SELECT pg_advisory_unlock($1);

-- name: fetch_pending_events
-- The next $1 due events in event_seq order, none behind an undelivered event that waits to retry.
-- A stream is a task's events (task_id NULL: the tenant's events outside tasks). A waiting event
-- blocks the later events of its stream; the due ones before it form a prefix of the stream, and
-- a prefix of event_seq order keeps that prefix intact.
WITH waiting AS (
    SELECT w.tenant_id, coalesce(w.task_id, 0) AS stream, min(w.event_seq) AS from_seq
      FROM appliance.outbox_events w
     WHERE w.delivered_at IS NULL AND w.next_attempt_at > now()
     GROUP BY w.tenant_id, coalesce(w.task_id, 0)
)
SELECT e.event_seq, e.event_id::text AS event_id, e.tenant_id, e.task_id, e.type, e.payload,
       e.created_at, e.attempts
  FROM appliance.outbox_events e
 WHERE e.delivered_at IS NULL AND e.next_attempt_at <= now()
   AND NOT EXISTS (SELECT 1 FROM waiting b
                    WHERE b.tenant_id = e.tenant_id AND b.stream = coalesce(e.task_id, 0)
                      AND b.from_seq < e.event_seq)
 ORDER BY e.event_seq
 LIMIT $1;

-- name: mark_events_delivered
-- Record that every sink accepted events $1 (one statement per batch); returns how many.
WITH marked AS (
    UPDATE appliance.outbox_events
       SET delivered_at = now(), attempts = attempts + 1
     WHERE event_seq = ANY ($1::bigint[]) AND delivered_at IS NULL
    RETURNING 1
)
SELECT count(*) FROM marked;

-- name: mark_events_failed
-- Record a failed delivery of events $1: error $2 and a retry after $3 seconds, each per event.
UPDATE appliance.outbox_events e
   SET attempts = e.attempts + 1, last_error = f.error,
       next_attempt_at = now() + make_interval(secs => f.delay)
  FROM unnest($1::bigint[], $2::text[], $3::double precision[]) AS f (event_seq, error, delay)
 WHERE e.event_seq = f.event_seq AND e.delivered_at IS NULL;

-- name: count_pending_events
-- The undelivered backlog (doctor, readiness): how many, how many failed, the oldest one's age.
SELECT count(*) AS pending, count(*) FILTER (WHERE attempts > 0) AS failing,
       extract(epoch FROM now() - min(created_at))::double precision AS oldest_seconds
  FROM appliance.outbox_events
 WHERE delivered_at IS NULL;

-- name: list_events_after
-- The outbox events after sequence number $1 (delivered or not), in order; at most $2. What changed, not the payload.
SELECT event_seq AS seq, type, tenant_id, task_id, created_at
  FROM appliance.outbox_events
 WHERE event_seq > $1
 ORDER BY event_seq
 LIMIT $2;

-- name: latest_event_seq
-- The sequence number of the newest outbox event (0 when there is none).
SELECT coalesce(max(event_seq), 0) FROM appliance.outbox_events;
