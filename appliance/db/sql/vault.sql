-- name: list_vault_keys
-- Every master key version (fingerprints only), oldest first.
SELECT key_version, fingerprint, created_at, retired_at
  FROM appliance.vault_keys ORDER BY key_version;

-- name: register_first_vault_key
-- Record the first master key as version 1 when none is recorded; the version, or null.
INSERT INTO appliance.vault_keys (key_version, fingerprint)
SELECT 1, $1
 WHERE NOT EXISTS (SELECT 1 FROM appliance.vault_keys)
ON CONFLICT DO NOTHING
RETURNING key_version;

-- name: lock_current_vault_key
-- Lock the current key version against writers of secrets and other rotations.
SELECT key_version, fingerprint, created_at, retired_at
  FROM appliance.vault_keys WHERE retired_at IS NULL FOR UPDATE;

-- name: retire_vault_keys
-- Retire the current key version (its fingerprint stays, to name it in errors).
UPDATE appliance.vault_keys SET retired_at = now() WHERE retired_at IS NULL;

-- name: add_vault_key
-- Record the next key version with its fingerprint; its number.
INSERT INTO appliance.vault_keys (key_version, fingerprint)
SELECT coalesce(max(key_version), 0) + 1, $1 FROM appliance.vault_keys
RETURNING key_version;

-- name: set_secret
-- Create or replace a secret under the current key version, audited without its value.
WITH current_key AS (
    SELECT key_version FROM appliance.vault_keys
     WHERE key_version = $5 AND retired_at IS NULL FOR SHARE
), saved AS (
    INSERT INTO appliance.secrets AS s
        (tenant_id, integration, workflow, name, key_version, ciphertext, rotate_every)
    SELECT $1, $2, $3, $4, k.key_version, $6, $7 FROM current_key k
    ON CONFLICT (tenant_id, integration, workflow, name) DO UPDATE
       SET key_version = excluded.key_version, ciphertext = excluded.ciphertext,
           rotate_every = excluded.rotate_every, updated_at = now(), rotated_at = now(),
           overdue_notified_at = NULL
    RETURNING s.tenant_id, (s.xmax = 0) AS created, s.rotate_every
)
SELECT EXISTS (SELECT 1 FROM current_key) AS key_current,
       (SELECT created FROM saved) AS created,
       (SELECT appliance.audit_append('tenant:' || v.tenant_id, v.tenant_id, NULL, $8,
                CASE WHEN v.created THEN 'secret.created' ELSE 'secret.replaced' END,
                jsonb_build_object('integration', $2::text, 'workflow', $3::text,
                                   'name', $4::text, 'key_version', $5::integer,
                                   'rotate_every', v.rotate_every::text))
          FROM saved v) AS audit_seq;

-- name: rotate_secret
-- Replace the value of an existing secret under the current key version, audited.
WITH current_key AS (
    SELECT key_version FROM appliance.vault_keys
     WHERE key_version = $5 AND retired_at IS NULL FOR SHARE
), saved AS (
    UPDATE appliance.secrets s
       SET key_version = k.key_version, ciphertext = $6, updated_at = now(), rotated_at = now(),
           overdue_notified_at = NULL
      FROM current_key k
     WHERE s.tenant_id = $1 AND s.integration = $2 AND s.workflow = $3 AND s.name = $4
    RETURNING s.tenant_id
)
SELECT EXISTS (SELECT 1 FROM current_key) AS key_current,
       (SELECT appliance.audit_append('tenant:' || v.tenant_id, v.tenant_id, NULL, $7,
                'secret.rotated',
                jsonb_build_object('integration', $2::text, 'workflow', $3::text,
                                   'name', $4::text, 'key_version', $5::integer))
          FROM saved v) AS audit_seq;

-- name: delete_secret
-- Delete a secret, audited; true when it existed.
WITH deleted AS (
    DELETE FROM appliance.secrets
     WHERE tenant_id = $1 AND integration = $2 AND workflow = $3 AND name = $4
    RETURNING tenant_id
)
SELECT appliance.audit_append('tenant:' || d.tenant_id, d.tenant_id, NULL, $5, 'secret.deleted',
                              jsonb_build_object('integration', $2::text, 'workflow', $3::text,
                                                 'name', $4::text)) IS NOT NULL
  FROM deleted d;

-- name: find_secret
-- The secret a workflow sees under a name: its own, else the tenant's '*' one for the integration.
SELECT secret_id, tenant_id, integration, workflow, name, key_version, ciphertext
  FROM appliance.secrets
 WHERE tenant_id = $1 AND integration = $2 AND workflow IN ($3, '*') AND name = $4
 ORDER BY workflow = '*'
 LIMIT 1;

-- name: list_secrets
-- A tenant's secrets, metadata only (never the ciphertext).
SELECT tenant_id, integration, workflow, name, key_version, rotate_every,
       created_at, updated_at, rotated_at, rotated_at + rotate_every AS due_at
  FROM appliance.secrets
 WHERE tenant_id = $1
 ORDER BY integration, workflow, name;

-- name: overdue_secrets
-- Secrets of every tenant whose rotation schedule has passed, most overdue first.
SELECT tenant_id, integration, workflow, name, key_version, rotate_every,
       created_at, updated_at, rotated_at, rotated_at + rotate_every AS due_at
  FROM appliance.secrets
 WHERE rotate_every IS NOT NULL AND rotated_at + rotate_every <= now()
 ORDER BY rotated_at + rotate_every, tenant_id, integration, workflow, name;

-- name: announce_overdue_secrets
-- Mark each overdue secret not yet announced in this period and emit its `secret.overdue` event.
WITH due AS (
    SELECT secret_id
      FROM appliance.secrets
     WHERE rotate_every IS NOT NULL AND rotated_at + rotate_every <= now()
       AND overdue_notified_at IS NULL
       FOR UPDATE SKIP LOCKED
), marked AS (
    UPDATE appliance.secrets s SET overdue_notified_at = now()
      FROM due d
     WHERE s.secret_id = d.secret_id
    RETURNING s.tenant_id, s.integration, s.workflow, s.name, s.key_version, s.rotate_every,
              s.created_at, s.updated_at, s.rotated_at, s.rotated_at + s.rotate_every AS due_at
), events AS (
    INSERT INTO appliance.outbox_events (tenant_id, task_id, type, payload)
    SELECT m.tenant_id, NULL, 'secret.overdue',
           jsonb_build_object('integration', m.integration, 'workflow', m.workflow,
                              'name', m.name, 'due_at', m.due_at,
                              'rotate_every', m.rotate_every::text,
                              'overdue_seconds', floor(extract(epoch FROM now() - m.due_at)))
      FROM marked m
     ORDER BY m.due_at, m.tenant_id, m.integration, m.workflow, m.name
)
SELECT tenant_id, integration, workflow, name, key_version, rotate_every,
       created_at, updated_at, rotated_at, due_at
  FROM marked
 ORDER BY due_at, tenant_id, integration, workflow, name;

-- name: lock_secrets
-- Every secret with its ciphertext, locked, for re-encryption under a new key version.
SELECT secret_id, tenant_id, integration, workflow, name, key_version, ciphertext
  FROM appliance.secrets
 ORDER BY secret_id
   FOR UPDATE;

-- name: reencrypt_secret
-- Store a secret's value re-encrypted under another key version (its value is unchanged).
UPDATE appliance.secrets SET key_version = $2, ciphertext = $3, updated_at = now()
 WHERE secret_id = $1;

-- name: audit_reencryption
-- Record in a tenant's chain that its secrets were re-encrypted under a new key version.
SELECT appliance.audit_append('tenant:' || $1::text, $1::text, NULL, $2, 'vault.reencrypted',
                              jsonb_build_object('key_version', $3::integer,
                                                 'secrets', $4::integer));

-- name: delete_lost_secrets
-- Delete every secret (the key they were sealed under is lost), audited per tenant by scope.
WITH deleted AS (
    DELETE FROM appliance.secrets
    RETURNING tenant_id, integration, workflow, name
), audited AS (
    SELECT d.tenant_id,
           appliance.audit_append('tenant:' || d.tenant_id, d.tenant_id, NULL, $1,
                                  'vault.lost_secrets_deleted',
                                  jsonb_build_object('secrets', jsonb_agg(
                                      d.integration || '/' || d.workflow || '/' || d.name
                                      ORDER BY d.integration, d.workflow, d.name))) AS seq
      FROM deleted d
     GROUP BY d.tenant_id
)
SELECT d.tenant_id, d.integration, d.workflow, d.name
  FROM deleted d
  JOIN audited a ON a.tenant_id = d.tenant_id AND a.seq IS NOT NULL
 ORDER BY d.tenant_id, d.integration, d.workflow, d.name;
