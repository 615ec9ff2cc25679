"""Query wrappers of `sql/tenancy.sql`: transactions in one tenant's context.

In `tenant_transaction(pool, tenant_id)` the connection runs as the role `appliance_tenant`
with the setting `appliance.tenant`, both local to the transaction, so the row-level security
of migration 0011 shows and accepts that tenant's rows only, even to a query that forgets its
tenant filter; a pooled connection carries neither into its next transaction.

The boundary: requests made for one tenant (the console's and API's reads and actions, the
control plane acting for a workflow) go through here. The engine, the outbox relay, the
audit verifier and the operator's commands stay on the owner's connections, which see every
tenant: claiming, lease expiry and relaying are cross-tenant by nature. No function is
SECURITY DEFINER: the server-side functions (audit appends, submit, cancel) run as the
caller, under the same policies.

The limit: the session user is the owner (or a superuser), so SQL written to escape (RESET
ROLE, SET ROLE, set_config of `appliance.tenant`) leaves the tenant context. This protects
against queries that omit or get wrong their tenant filter, not against hostile SQL: code
that is not trusted never gets a database connection (it reaches data through the control
plane only).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from appliance.db import pool, sql

_Q = sql.load("tenancy")


@contextlib.asynccontextmanager
async def tenant_transaction(executor: pool.Pool, tenant_id: str) -> AsyncIterator[pool.Connection]:
    """A pooled connection in a transaction that sees and writes `tenant_id`'s rows only."""
    with pool.translated():
        async with executor.acquire() as conn, conn.transaction():
            await conn.execute(_Q["enter_tenant"], tenant_id)
            yield conn
