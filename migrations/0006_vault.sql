-- The vault: secrets encrypted at rest under a master key that never enters the database.
-- `vault_keys` records a fingerprint (keyed BLAKE2b, hex) of every master key version, so a
-- daemon started with the wrong key stops with an explicit error instead of failing to decrypt.
-- A secret belongs to tenant + integration + workflow + name; workflow '*' means every workflow
-- of the tenant that uses that integration, and a secret named for one workflow overrides it.
-- `ciphertext` is PyNaCl SecretBox output (nonce | ciphertext | MAC) of the canonical scope
-- followed by the value, so a row copied into another scope does not decrypt there.

CREATE TABLE appliance.vault_keys (
    key_version integer PRIMARY KEY CHECK (key_version >= 1),
    fingerprint text NOT NULL UNIQUE CHECK (fingerprint ~ '^[0-9a-f]{32}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);

-- At most one current (not retired) key version.
CREATE UNIQUE INDEX vault_keys_current ON appliance.vault_keys ((true)) WHERE retired_at IS NULL;

CREATE TABLE appliance.secrets (
    secret_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    text NOT NULL REFERENCES appliance.tenants,
    integration  text NOT NULL CHECK (integration ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    workflow     text NOT NULL CHECK (length(workflow) BETWEEN 1 AND 200),
    name         text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$'),
    key_version  integer NOT NULL REFERENCES appliance.vault_keys,
    ciphertext   bytea NOT NULL,
    rotate_every interval CHECK (rotate_every > interval '0'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    rotated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, integration, workflow, name)
);

-- `overdue_secrets` scans the scheduled rows (timestamptz + interval is not immutable, so it
-- cannot be indexed as an expression; the partial index keeps the scan to scheduled rows).
CREATE INDEX secrets_scheduled ON appliance.secrets (rotated_at) WHERE rotate_every IS NOT NULL;
