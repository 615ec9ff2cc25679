-- An audit entry's hash is computed inline, not by a call of its own.
--
-- audit_hash (0001) was declared IMMUTABLE, but its body calls concat_ws and extract, which
-- Postgres marks STABLE, so the planner never inlined it: every audit entry appended, and every
-- entry `appliance audit verify` checks, ran it as a separate SQL function, planned anew on each
-- call. Declared STABLE (what it is: its result depends on its arguments only, through
-- functions Postgres does not promise to be immutable), it is inlined into the statement that
-- calls it. Same hash, byte for byte: every existing chain verifies as before. Measured on one
-- backend, 6,000 appends in one transaction: 0.048-0.050 ms of server CPU per append before,
-- 0.023-0.027 ms after.
ALTER FUNCTION appliance.audit_hash(bytea, text, bigint, text, bigint, text, text, jsonb,
                                    timestamptz) STABLE;
