-- Row-level security on every tenant table: a transaction in a tenant's context sees and writes
-- that tenant's rows only, whatever the query says.
--
-- A tenant context is a transaction that switched to the role `appliance_tenant` and set the
-- setting `appliance.tenant` (both transaction-local; appliance/db/tenancy.py). The owner of
-- the tables, which the daemon connects as, keeps every row: the engine's claims, leases and
-- relays are cross-tenant by nature. Superusers bypass row security whatever the policies say.
--
-- On each table of the schema that has a tenant_id column, enforce_tenant_isolation() enables
-- and forces row security (forced: the owner is held to the policies too, so its full access is
-- a policy of its own, visible in pg_policies, not an implicit bypass) and creates
--   tenant_isolation  to appliance_tenant: tenant_id = the transaction's tenant, for reading
--                     and writing; no tenant set (NULL, or '' once the setting was used in
--                     the session) matches no row;
--   owner_access      to the table's owner: every row;
-- and grants appliance_tenant the table (only SELECT on `tenants`: tenants are created by the
-- operator, and a tenant sees its own row only). Tables without tenant_id (prices,
-- vault_keys, schema_migrations) are not granted to the tenant role.
--
-- Forced security has two costs for an owner that is not a superuser: COPY FROM into these
-- tables is refused (use INSERT), and pg_dump needs --enable-row-security.
--
-- The role is cluster-wide, so its creation is idempotent and tolerates the migration of
-- another database of the same server creating it at the same moment. The role that runs the
-- migrations needs CREATEROLE for the first creation, or a superuser creates the role and
-- grants it to that role beforehand (then nothing here needs CREATEROLE).
--
-- A later migration that adds a tenant table ends with `SELECT appliance.enforce_tenant_isolation();`
-- (tests/integration/test_row_security.py fails while a tenant table has no forced policy).

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'appliance_tenant') THEN
        BEGIN
            CREATE ROLE appliance_tenant NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB
                NOCREATEROLE NOREPLICATION;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created meanwhile by the migration of another database of this server
        END;
    END IF;
    -- The connecting role must be allowed to SET ROLE to it (a superuser always is; from
    -- PostgreSQL 16 on, membership alone does not allow SET ROLE).
    IF NOT pg_has_role(current_user, 'appliance_tenant',
                       CASE WHEN current_setting('server_version_num')::integer >= 160000
                            THEN 'SET' ELSE 'MEMBER' END) THEN
        BEGIN
            GRANT appliance_tenant TO CURRENT_USER;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'role % cannot be granted the role appliance_tenant', current_user
                USING ERRCODE = 'insufficient_privilege',
                      HINT = format('as a superuser: GRANT appliance_tenant TO %I', current_user);
        END;
    END IF;
END $$;

GRANT USAGE ON SCHEMA appliance TO appliance_tenant;

-- Returns how many tables it covered; safe to call again (policies are recreated).
CREATE FUNCTION appliance.enforce_tenant_isolation() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_table    record;
    v_sequence regclass;
    v_n        integer := 0;
BEGIN
    -- A role of that name with more power than a tenant's would defeat every policy below.
    IF EXISTS (SELECT FROM pg_roles r
                WHERE r.rolname = 'appliance_tenant'
                  AND (r.rolsuper OR r.rolbypassrls OR r.rolcanlogin
                       OR EXISTS (SELECT FROM pg_auth_members m WHERE m.member = r.oid))) THEN
        RAISE EXCEPTION 'role appliance_tenant must be NOLOGIN, NOSUPERUSER, NOBYPASSRLS and a '
                        'member of no role';
    END IF;
    FOR v_table IN
        SELECT c.oid::regclass AS name, c.relname, pg_get_userbyid(c.relowner) AS owner
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid
         WHERE n.nspname = 'appliance' AND c.relkind IN ('r', 'p')
           AND a.attname = 'tenant_id' AND NOT a.attisdropped
         ORDER BY c.relname
    LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', v_table.name);
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', v_table.name);
        EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %s', v_table.name);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %s TO appliance_tenant'
            ' USING (tenant_id = nullif(current_setting(%L, true), %L))'
            ' WITH CHECK (tenant_id = nullif(current_setting(%L, true), %L))',
            v_table.name, 'appliance.tenant', '', 'appliance.tenant', '');
        EXECUTE format('DROP POLICY IF EXISTS owner_access ON %s', v_table.name);
        EXECUTE format('CREATE POLICY owner_access ON %s TO %I USING (true) WITH CHECK (true)',
                       v_table.name, v_table.owner);
        IF v_table.relname = 'tenants' THEN
            EXECUTE format('GRANT SELECT ON %s TO appliance_tenant', v_table.name);
        ELSE
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO appliance_tenant',
                           v_table.name);
        END IF;
        -- serial columns draw from a sequence the inserting role must be allowed to use
        -- (identity columns need no grant).
        FOR v_sequence IN
            SELECT d.objid::regclass FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
               AND d.refobjid = v_table.name AND d.deptype = 'a' AND s.relkind = 'S'
        LOOP
            EXECUTE format('GRANT USAGE ON SEQUENCE %s TO appliance_tenant', v_sequence);
        END LOOP;
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
END $$;

REVOKE EXECUTE ON FUNCTION appliance.enforce_tenant_isolation() FROM PUBLIC;

SELECT appliance.enforce_tenant_isolation();
