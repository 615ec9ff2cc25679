-- Documents for surgical retrieval: a tenant's files, split into passages of ~150-400 tokens,
-- searched with BM25 so a model gets the few passages a task needs instead of whole files.
--
-- collections       one row per (tenant, collection): how many passages it holds and their
--                   total tokens (avgdl = tokens / passages, the BM25 length norm), and
--                   their keywords' tokens (the title field's length norm).
-- documents         one row per source file: its content's sha256, so an unchanged file is
--                   skipped and a changed one has its passages replaced.
-- passages          the text with its place in the source (position, lines, characters), a
--                   title (the heading path, or the enclosing def/class), its token estimate,
--                   its keywords' token count, and two english tsvectors filled at ingest:
--                   tsv (keywords and text, identifiers cut into their parts, under a GIN
--                   index) and keyword_tsv (the keywords alone: the file's name and folder,
--                   the names of the definitions or headings of the title, and once more
--                   those that start in the passage).
-- collection_terms  document frequency: per (tenant, collection, lexeme), how many passages
--                   contain the lexeme. Kept exact by the ingest statements (a replaced
--                   document's lexemes are subtracted, the new ones added; a lexeme that no
--                   passage holds any more has no row).
--
-- Why keep document frequency in a table instead of counting matches at query time: a count is
-- a GIN bitmap scan plus a heap visit per matching passage for every query term, which grows
-- with the corpus (a common term in a large collection visits most of it); the table makes idf
-- one index probe per term. The price is paid at ingest, where writers of one collection
-- queue on that collection's row (the ingest transaction takes it FOR UPDATE), which keeps the
-- counts exact without deadlocks between writers of the same lexemes.
--
-- Scoring (appliance/db/sql/documents.sql, search_passages), over the collections searched
-- together: idf = ln(1 + (N - df + 0.5) / (df + 0.5)) with N and df summed over them; tf = the
-- number of positions of the lexeme in the passage's tsvector; dl = the passage's tokens;
-- avgdl = their tokens / their passages; BM25F over two fields: the text (tf in tsv, normalised
-- by dl / avgdl with b) and the keywords (tf in keyword_tsv, normalised by the keywords' length
-- over their average with its own b, times a field weight), summed per lexeme into tf', then
-- score = sum over query lexemes of idf * tf' * (k1 + 1) / (tf' + k1).
-- The tsvector carries no weights (setweight): the search keeps only the query's lexemes of a
-- candidate by marking them with weight A and filtering on it.

CREATE TABLE appliance.collections (
    tenant_id  text NOT NULL REFERENCES appliance.tenants,
    collection text NOT NULL CHECK (collection ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$'),
    passages   bigint NOT NULL DEFAULT 0 CHECK (passages >= 0),
    tokens     bigint NOT NULL DEFAULT 0 CHECK (tokens >= 0),
    keyword_tokens bigint NOT NULL DEFAULT 0 CHECK (keyword_tokens >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, collection)
);

CREATE TABLE appliance.documents (
    document_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES appliance.tenants,
    collection  text NOT NULL,
    source      text NOT NULL,
    sha256      text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    ingested_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, collection, source),
    FOREIGN KEY (tenant_id, collection) REFERENCES appliance.collections ON DELETE CASCADE
);

CREATE TABLE appliance.passages (
    passage_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_id bigint NOT NULL REFERENCES appliance.documents ON DELETE CASCADE,
    tenant_id   text NOT NULL REFERENCES appliance.tenants,
    collection  text NOT NULL,
    position    integer NOT NULL CHECK (position >= 0),
    title       text NOT NULL,
    text        text NOT NULL,
    tokens      integer NOT NULL CHECK (tokens >= 0),
    line_start  integer NOT NULL CHECK (line_start >= 1),
    line_end    integer NOT NULL CHECK (line_end >= line_start),
    char_start  integer NOT NULL CHECK (char_start >= 0),
    char_end    integer NOT NULL CHECK (char_end >= char_start),
    keyword_tokens integer NOT NULL DEFAULT 0 CHECK (keyword_tokens >= 0),
    tsv         tsvector NOT NULL,
    keyword_tsv tsvector NOT NULL,
    UNIQUE (document_id, position)
);
CREATE INDEX passages_tsv ON appliance.passages USING gin (tsv);

CREATE TABLE appliance.collection_terms (
    tenant_id  text NOT NULL REFERENCES appliance.tenants,
    collection text NOT NULL,
    lexeme     text NOT NULL,
    passages   integer NOT NULL CHECK (passages > 0),
    PRIMARY KEY (tenant_id, collection, lexeme),
    FOREIGN KEY (tenant_id, collection) REFERENCES appliance.collections ON DELETE CASCADE
);
