-- Policy documents, versioned per tenant: applying a changed document adds a version, never
-- edits one; a decision records the version that made it. There is no global document: every
-- table carries tenant_id, so a policy shared by all tenants is applied to each of them.

CREATE TABLE appliance.policies (
    tenant_id    text NOT NULL REFERENCES appliance.tenants,
    version      integer NOT NULL CHECK (version >= 1),
    document     jsonb NOT NULL,
    content_hash text NOT NULL,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, version)
);
