-- The cheapest context per call, and a version per collection for the retrievers' caches.
--
-- model_calls.context            how the call got the agent's documents: 'retrieval' (the
--                                passages the question needs, in the first message, uncached)
--                                or 'collection' (the whole collection in the cached system
--                                prompt); NULL for an agent without collections.
-- model_calls.context_tokens     the documents' tokens in the request (estimate).
-- model_calls.context_expected_usd  what the chosen context was expected to cost per call, and
-- model_calls.context_other_usd     what the other choice was expected to cost, both from the
--                                collection's size, the agent's retrieval budget, the model's
--                                prices and the agent's recent call rate (agents/context_choice.py).
-- collections.version            set anew (from one sequence for all collections, so a number
--                                is never reused, even by a collection dropped and created
--                                again) by every change of the collection's passages, so a
--                                process that keeps the collection's vectors in memory knows
--                                with one small read whether they are still current.

ALTER TABLE appliance.model_calls
    ADD COLUMN context text CHECK (context IN ('retrieval', 'collection')),
    ADD COLUMN context_tokens integer CHECK (context_tokens >= 0),
    ADD COLUMN context_expected_usd numeric CHECK (context_expected_usd >= 0),
    ADD COLUMN context_other_usd numeric CHECK (context_other_usd >= 0);

CREATE SEQUENCE appliance.collection_versions;

ALTER TABLE appliance.collections
    ADD COLUMN version bigint NOT NULL DEFAULT nextval('appliance.collection_versions');

-- Owned by the column it numbers, so the tenant role gets its use with the table's grants.
ALTER SEQUENCE appliance.collection_versions OWNED BY appliance.collections.version;
SELECT appliance.enforce_tenant_isolation();
