-- name: list_chain
-- The entries of one chain in order.
SELECT chain, seq, tenant_id, task_id, actor, action, detail, created_at,
       encode(prev_hash, 'hex') AS prev_hash, encode(hash, 'hex') AS hash
  FROM appliance.audit_entries WHERE chain = $1 ORDER BY seq;

-- name: find_chain_breaks
-- Entries whose hash, link to the previous entry, or sequence does not verify, first first.
SELECT chain, seq, reason FROM (
    SELECT e.chain, e.seq,
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
    WINDOW w AS (PARTITION BY e.chain ORDER BY e.seq)
) checked
 WHERE reason IS NOT NULL
 ORDER BY chain, seq
 LIMIT $1;

-- name: count_audit_entries
-- How many entries and chains the log holds.
SELECT count(*) AS entries, count(DISTINCT chain) AS chains FROM appliance.audit_entries;

-- name: search_audit_entries
-- Entries of tenants $1, newest first, narrowed by task $2, actor $3 (a part of it), action $4, created in [$5, $6); at most $7.
SELECT chain, seq, tenant_id, task_id, actor, action, detail, created_at,
       encode(prev_hash, 'hex') AS prev_hash, encode(hash, 'hex') AS hash
  FROM appliance.audit_entries
 WHERE tenant_id = ANY ($1::text[])
   AND ($2::bigint IS NULL OR task_id = $2)
   AND ($3::text IS NULL OR strpos(actor, $3) > 0)
   AND ($4::text IS NULL OR action = $4)
   AND ($5::timestamptz IS NULL OR created_at >= $5)
   AND ($6::timestamptz IS NULL OR created_at < $6)
 ORDER BY created_at DESC, chain, seq DESC
 LIMIT $7;

-- name: find_tenant_chain_breaks
-- Like find_chain_breaks, over the chains of tenants $2 only (a chain belongs to one tenant).
SELECT chain, seq, reason FROM (
    SELECT e.chain, e.seq,
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
     WHERE e.tenant_id = ANY ($2::text[])
    WINDOW w AS (PARTITION BY e.chain ORDER BY e.seq)
) checked
 WHERE reason IS NOT NULL
 ORDER BY chain, seq
 LIMIT $1;

-- name: find_breaks_in_chain
-- Like find_chain_breaks, over chain $1 only.
SELECT chain, seq, reason FROM (
    SELECT e.chain, e.seq,
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
     WHERE e.chain = $1
    WINDOW w AS (ORDER BY e.seq)
) checked
 WHERE reason IS NOT NULL
 ORDER BY seq;
