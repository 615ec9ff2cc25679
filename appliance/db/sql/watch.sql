-- name: list_file_states
-- A page of the file states a watch enqueued under a folder (path prefix $3), in task order after task $4.
SELECT task_id, input->>'path' AS path, (input->>'size')::bigint AS size,
       (input->>'mtime_ns')::bigint AS mtime_ns, input->>'sha256' AS sha256,
       input->>'event' AS event
  FROM appliance.tasks
 WHERE tenant_id = $1 AND workflow = $2 AND task_id > $4
   AND idempotency_key LIKE 'file:%'
   AND left(input->>'path', length($3)) = $3
 ORDER BY task_id
 LIMIT $5;
