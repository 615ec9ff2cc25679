-- name: grant_console_role
-- Give a login a role in a tenant (replacing another role), audited in the tenant's chain when
-- it changed anything; true when it did.
WITH previous AS (
    SELECT role FROM appliance.console_grants WHERE login = $1 AND tenant_id = $2
), written AS (
    INSERT INTO appliance.console_grants AS g (login, tenant_id, role, granted_by)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (login, tenant_id) DO UPDATE
       SET role = excluded.role, granted_by = excluded.granted_by, granted_at = now()
     WHERE g.role IS DISTINCT FROM excluded.role
    RETURNING g.tenant_id, g.role
)
SELECT appliance.audit_append('tenant:' || w.tenant_id, w.tenant_id, NULL, $4, 'console.granted',
                              jsonb_build_object('login', $1::text, 'role', w.role,
                                                 'previous', (SELECT role FROM previous)))
       IS NOT NULL
  FROM written w;

-- name: list_console_grants
-- The roles granted to one login, by tenant.
SELECT login, tenant_id, role, granted_by, granted_at
  FROM appliance.console_grants
 WHERE login = $1
 ORDER BY tenant_id;

-- name: list_all_console_grants
-- Every role granted in the database, by login and tenant.
SELECT login, tenant_id, role, granted_by, granted_at
  FROM appliance.console_grants
 ORDER BY login, tenant_id;
