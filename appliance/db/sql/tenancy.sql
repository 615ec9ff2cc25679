-- name: enter_tenant
-- Switch this transaction to the role appliance_tenant and to tenant $1 (SET LOCAL ROLE and a transaction-local setting: both end with the transaction).
SELECT set_config('role', 'appliance_tenant', true), set_config('appliance.tenant', $1, true);
