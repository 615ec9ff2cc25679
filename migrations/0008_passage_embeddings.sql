-- Meaning-based retrieval beside BM25: the sentence-embedding vectors of each passage.
--
-- passage_embeddings  one row per passage that has vectors. `vectors` holds one unit vector
--                     per view of the passage (its text cut where a definition or a section
--                     starts, then into pieces of about 100 tokens, each led by the file's
--                     path), as float32 little-endian, one after another; `model` names the
--                     model that made them (vectors of another model are never compared).
--                     `private`: every definition that starts in the passage has a private
--                     name (Python: a leading underscore, not a dunder); the semantic ranking
--                     counts such a passage a little less. The passage's tenant and collection
--                     are repeated so that a search reads this table alone, through its index.
--                     A passage without a row (ingested while the model was not installed) is
--                     still found by BM25; its row goes with it (ON DELETE CASCADE), so a
--                     changed document's vectors are replaced with its passages.
--
-- pgvector is not available, so similarity is computed by the appliance: a search fetches the
-- collection's vectors and ranks them in numpy. Measured on 1,087 passages (4,500 vectors):
-- ~20-25 ms per search, against ~400 ms for the same dot products in SQL over real[].
-- The vectors are incompressible, so they are stored out of line without trying (EXTERNAL).

CREATE TABLE appliance.passage_embeddings (
    passage_id bigint PRIMARY KEY REFERENCES appliance.passages ON DELETE CASCADE,
    tenant_id  text NOT NULL REFERENCES appliance.tenants,
    collection text NOT NULL,
    model      text NOT NULL,
    private    boolean NOT NULL DEFAULT false,
    vectors    bytea NOT NULL CHECK (octet_length(vectors) > 0)
);
ALTER TABLE appliance.passage_embeddings ALTER COLUMN vectors SET STORAGE EXTERNAL;
CREATE INDEX passage_embeddings_search
    ON appliance.passage_embeddings (tenant_id, collection, model);
