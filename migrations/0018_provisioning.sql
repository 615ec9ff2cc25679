-- Console roles granted in the database rather than in the config file: the first admin a
-- provisioning file names (appliance/provisioning.py) gets `admin` in every tenant it creates.
-- The console reads these beside `[[console.grants]]` and the tailnet app capability; the
-- most permissive grant wins in each tenant. Postgres holds them because the config file is
-- read-only input (a conffile of the package): state the box creates at its first boot belongs
-- here, where backups, the audit chain and every process see it.
CREATE TABLE appliance.console_grants (
    login      text NOT NULL CHECK (login <> '' AND login !~ '\s'),
    tenant_id  text NOT NULL REFERENCES appliance.tenants ON DELETE CASCADE,
    role       text NOT NULL CHECK (role IN ('viewer', 'operator', 'approver', 'admin')),
    granted_by text NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (login, tenant_id)
);

SELECT appliance.enforce_tenant_isolation();
