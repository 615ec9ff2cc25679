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

-- name: create_functions_table
-- The record of the function files applied, each with the checksum of the text it had.
CREATE TABLE IF NOT EXISTS appliance.schema_functions (
    name       text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: find_functions_table
-- Whether the function files' record exists yet.
SELECT to_regclass('appliance.schema_functions') IS NOT NULL;

-- name: list_applied_functions
-- The function files applied, with the checksum of the text each had.
SELECT name, checksum FROM appliance.schema_functions ORDER BY name;

-- name: record_functions
-- Record that a function file was applied in the text of this checksum.
INSERT INTO appliance.schema_functions (name, checksum) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now();
