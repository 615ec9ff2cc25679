-- name: lock_migrations
-- Take the session-level advisory lock that serialises migration runs.
SELECT pg_advisory_lock($1);

-- name: unlock_migrations
-- Release the migrations lock.
SELECT pg_advisory_unlock($1);

-- name: create_migrations_schema
-- The schema that holds every table of the appliance.
CREATE SCHEMA IF NOT EXISTS appliance;

-- name: create_migrations_table
-- The record of applied migrations (system table: it holds no tenant data).
CREATE TABLE IF NOT EXISTS appliance.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: find_migrations_table
-- Whether the migrations table exists yet.
SELECT to_regclass('appliance.schema_migrations') IS NOT NULL;

-- name: list_applied_migrations
-- The applied migrations with their checksums.
SELECT version, checksum FROM appliance.schema_migrations ORDER BY version;

-- name: record_migration
-- Record one applied migration.
INSERT INTO appliance.schema_migrations (version, name, checksum) VALUES ($1, $2, $3);
