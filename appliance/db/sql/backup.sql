-- name: export_snapshot
-- Name this transaction's snapshot, so pg_dump reads exactly what the manifest describes.
SELECT pg_export_snapshot();

-- name: count_other_sessions
-- Sessions on this database besides this one (a running daemon has several).
SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid();

-- name: has_schema
-- Whether the appliance's schema exists in this database.
SELECT to_regnamespace('appliance') IS NOT NULL;

-- name: count_tasks
-- How many tasks the database holds (a box with none is empty).
SELECT count(*) FROM appliance.tasks;

-- name: drop_set_aside_schema
-- Drop what an earlier restore set aside (left only when that restore was interrupted).
DROP SCHEMA IF EXISTS appliance_before_restore CASCADE;

-- name: set_schema_aside
-- Keep the box's schema under another name until the restore has committed.
ALTER SCHEMA appliance RENAME TO appliance_before_restore;

-- name: drop_schema
-- Drop the appliance's schema (a failed restore's partial one).
DROP SCHEMA IF EXISTS appliance CASCADE;

-- name: put_schema_back
-- Give the set-aside schema its name back after a failed restore.
ALTER SCHEMA appliance_before_restore RENAME TO appliance;

-- name: enforce_tenant_isolation
-- Recreate the row-security policies and grants for the tables' present owner.
SELECT appliance.enforce_tenant_isolation();

-- name: count_restored_rows
-- What a restore brought back: tasks, audit entries and chains, secrets, model calls, budgets.
SELECT (SELECT count(*) FROM appliance.tasks) AS tasks,
       (SELECT count(*) FROM appliance.audit_entries) AS audit_entries,
       (SELECT count(DISTINCT chain) FROM appliance.audit_entries) AS audit_chains,
       (SELECT count(*) FROM appliance.secrets) AS secrets,
       (SELECT count(*) FROM appliance.model_calls) AS model_calls,
       (SELECT count(*) FROM appliance.budgets) AS budgets;

-- name: get_vault_fingerprint
-- The fingerprint of the current vault master key (null: the vault was never initialised).
SELECT fingerprint FROM appliance.vault_keys WHERE retired_at IS NULL
 ORDER BY key_version DESC LIMIT 1;

-- name: get_server
-- The server's version as a number (150013 for 15.13; pg_dump must be of this major or newer)
-- and the database's name.
SELECT current_setting('server_version_num')::integer AS version, current_database() AS database;
