-- Agent definitions, versioned: applying a changed definition adds a version, never edits one;
-- a task records the version that ran it (in its checkpoints and in the cost ledger).

CREATE TABLE appliance.agents (
    tenant_id    text NOT NULL REFERENCES appliance.tenants,
    name         text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    version      integer NOT NULL CHECK (version >= 1),
    persona      text NOT NULL,
    model        text NOT NULL,
    tools        jsonb NOT NULL DEFAULT '[]',
    max_tokens   integer NOT NULL CHECK (max_tokens >= 1),
    max_turns    integer NOT NULL CHECK (max_turns >= 1),
    retrieval    jsonb NOT NULL DEFAULT '{}',
    content_hash text NOT NULL,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name, version)
);
