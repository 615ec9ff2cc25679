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
