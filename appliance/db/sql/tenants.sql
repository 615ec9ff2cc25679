-- name: create_tenant
-- Create a tenant if it does not exist, audited in the tenant's chain; true when created.
WITH created AS (
    INSERT INTO appliance.tenants (tenant_id, name) VALUES ($1, $2)
    ON CONFLICT (tenant_id) DO NOTHING
    RETURNING tenant_id, name
)
SELECT appliance.audit_append('tenant:' || c.tenant_id, c.tenant_id, NULL, $3, 'tenant.created',
                              jsonb_build_object('name', c.name)) IS NOT NULL
  FROM created c;

-- name: list_tenants
-- Every tenant, oldest first.
SELECT tenant_id, name, created_at FROM appliance.tenants ORDER BY created_at, tenant_id;

-- name: get_tenant
-- One tenant, or no row.
SELECT tenant_id, name, created_at FROM appliance.tenants WHERE tenant_id = $1;
