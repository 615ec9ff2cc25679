-- name: configure_node_session
-- The holder's session ends after $1 ms without a statement (PostgreSQL 14+), so a silent holder frees its name; $2 names it in pg_stat_activity.
SELECT set_config('application_name', $2, false),
       CASE WHEN current_setting('server_version_num')::integer >= 140000
            THEN set_config('idle_session_timeout', $1, false) END;

-- name: hold_node
-- Take node name $1 for this session (advisory lock $4, hashtext($1)) and record pid $2 on host $3 as its holder; returns this session's backend pid, no row when another session holds it.
WITH lock AS (
    SELECT pg_try_advisory_lock($4::integer, hashtext($1)) AS held
)
INSERT INTO appliance.nodes AS n (node, pid, host, backend_pid, started_at, heartbeat_at)
SELECT $1, $2, $3, pg_backend_pid(), now(), now() FROM lock WHERE lock.held
ON CONFLICT (node) DO UPDATE
   SET pid = EXCLUDED.pid, host = EXCLUDED.host, backend_pid = EXCLUDED.backend_pid,
       started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, stopped_at = NULL
RETURNING n.backend_pid;

-- name: beat_node
-- The holder's heartbeat: node $1, held by this session, is alive now.
UPDATE appliance.nodes SET heartbeat_at = now()
 WHERE node = $1 AND backend_pid = pg_backend_pid()
RETURNING heartbeat_at;

-- name: release_node
-- Give node name $1 up (advisory lock $2, hashtext($1)), marking its row stopped if this session holds it.
WITH stopped AS (
    UPDATE appliance.nodes SET stopped_at = now(), heartbeat_at = now()
     WHERE node = $1 AND backend_pid = pg_backend_pid()
)
SELECT pg_advisory_unlock($2::integer, hashtext($1));

-- name: get_node
-- Who holds (or last held) node name $1, and for how long it has been silent.
SELECT node, pid, host, backend_pid, started_at, heartbeat_at, stopped_at,
       extract(epoch FROM now() - heartbeat_at)::double precision AS silent_seconds
  FROM appliance.nodes WHERE node = $1;

-- name: list_nodes
-- Every node name ever held, the most recently heard from first.
SELECT node, pid, host, backend_pid, started_at, heartbeat_at, stopped_at,
       extract(epoch FROM now() - heartbeat_at)::double precision AS silent_seconds
  FROM appliance.nodes ORDER BY heartbeat_at DESC, node;
