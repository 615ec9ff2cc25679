-- name: get_latest_policy
-- The newest version of a tenant's policy.
SELECT tenant_id, version, document, content_hash, created_by, created_at
  FROM appliance.policies WHERE tenant_id = $1
 ORDER BY version DESC LIMIT 1;

-- name: get_policy_version
-- One version of a tenant's policy.
SELECT tenant_id, version, document, content_hash, created_by, created_at
  FROM appliance.policies WHERE tenant_id = $1 AND version = $2;

-- name: insert_policy_version
-- Add a version unless the newest one has the same content, audited in the tenant's chain when added; returns the version that holds it and whether it is new.
WITH latest AS (
    SELECT p.version, p.content_hash FROM appliance.policies p
     WHERE p.tenant_id = $1 ORDER BY p.version DESC LIMIT 1
), inserted AS (
    INSERT INTO appliance.policies (tenant_id, version, document, content_hash, created_by)
    SELECT $1, coalesce((SELECT version FROM latest), 0) + 1, $2::text::jsonb, $3, $4
     WHERE NOT EXISTS (SELECT 1 FROM latest WHERE content_hash = $3)
    RETURNING tenant_id, version, content_hash, created_by
), audited AS (
    SELECT i.version,
           appliance.audit_append('tenant:' || i.tenant_id, i.tenant_id, NULL, i.created_by,
                                  'policy.applied', jsonb_build_object('version', i.version,
                                      'content_hash', i.content_hash, 'rules', $5::integer)) AS seq
      FROM inserted i
)
SELECT version, true AS created FROM audited
UNION ALL
SELECT version, false FROM latest WHERE content_hash = $3;
