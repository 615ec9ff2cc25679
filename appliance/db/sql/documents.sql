-- name: lock_collection
-- Create collection $2 of tenant $1 if new and lock its row: writers of one collection queue here.
INSERT INTO appliance.collections AS c (tenant_id, collection) VALUES ($1, $2)
ON CONFLICT (tenant_id, collection) DO UPDATE SET passages = c.passages
RETURNING c.passages;

-- name: list_documents
-- The source and content sha256 of every document of collection $2 of tenant $1, and whether all its passages have vectors of model $3.
SELECT d.document_id, d.source, d.sha256,
       NOT EXISTS (SELECT FROM appliance.passages p
                    WHERE p.document_id = d.document_id
                      AND NOT EXISTS (SELECT FROM appliance.passage_embeddings e
                                       WHERE e.passage_id = p.passage_id AND e.model = $3))
       AS embedded
  FROM appliance.documents d
 WHERE d.tenant_id = $1 AND d.collection = $2;

-- name: find_document
-- The id and content sha256 of document $3 of collection $2 of tenant $1 (no row: not stored), and whether all its passages have vectors of model $4.
SELECT d.document_id, d.sha256,
       NOT EXISTS (SELECT FROM appliance.passages p
                    WHERE p.document_id = d.document_id
                      AND NOT EXISTS (SELECT FROM appliance.passage_embeddings e
                                       WHERE e.passage_id = p.passage_id AND e.model = $4))
       AS embedded
  FROM appliance.documents d
 WHERE d.tenant_id = $1 AND d.collection = $2 AND d.source = $3;

-- name: delete_passages
-- Delete document $1's passages, taking their lexemes and tokens off the collection's statistics.
WITH gone AS (
    DELETE FROM appliance.passages p WHERE p.document_id = $1
    RETURNING p.tenant_id, p.collection, p.tokens, p.keyword_tokens, p.tsv
), counted AS (
    SELECT g.tenant_id, g.collection, u.lexeme, count(*)::integer AS n
      FROM gone g CROSS JOIN LATERAL unnest(tsvector_to_array(g.tsv)) AS u (lexeme)
     GROUP BY g.tenant_id, g.collection, u.lexeme
), dropped AS (
    DELETE FROM appliance.collection_terms t USING counted k
     WHERE t.tenant_id = k.tenant_id AND t.collection = k.collection AND t.lexeme = k.lexeme
       AND t.passages <= k.n
), lowered AS (
    UPDATE appliance.collection_terms t SET passages = t.passages - k.n
      FROM counted k
     WHERE t.tenant_id = k.tenant_id AND t.collection = k.collection AND t.lexeme = k.lexeme
       AND t.passages > k.n
), totals AS (
    SELECT g.tenant_id, g.collection, count(*) AS n, sum(g.tokens) AS tokens,
           sum(g.keyword_tokens) AS keyword_tokens
      FROM gone g GROUP BY g.tenant_id, g.collection
), stats AS (
    UPDATE appliance.collections c
       SET passages = c.passages - s.n, tokens = c.tokens - s.tokens,
           keyword_tokens = c.keyword_tokens - s.keyword_tokens,
           version = nextval('appliance.collection_versions')
      FROM totals s
     WHERE c.tenant_id = s.tenant_id AND c.collection = s.collection
)
SELECT count(*) FROM gone;

-- name: save_document
-- Insert document $3 of collection $2 of tenant $1 with content sha256 $4, or update its sha256; returns its id.
INSERT INTO appliance.documents AS d (tenant_id, collection, source, sha256)
VALUES ($1, $2, $3, $4)
ON CONFLICT (tenant_id, collection, source)
DO UPDATE SET sha256 = excluded.sha256, ingested_at = now()
RETURNING d.document_id;

-- name: insert_passages
-- Insert document $3's passages (arrays $4..$16, one element per passage) with their vectors of model $17, and add their lexemes and tokens to the statistics.
-- The passage's lexemes are those of its keywords ($12, the title field) and of its text as
-- indexed ($14, identifiers cut into their parts); the keywords' alone are the title field's.
-- A passage whose vectors ($15) are NULL, or all of them when $17 is NULL, gets no vector row.
WITH added AS (
    INSERT INTO appliance.passages (tenant_id, collection, document_id, position, title, text,
                                    tokens, line_start, line_end, char_start, char_end,
                                    keyword_tokens, tsv, keyword_tsv)
    SELECT $1, $2, $3, u.position, u.title, u.text, u.tokens, u.line_start, u.line_end,
           u.char_start, u.char_end, u.keyword_tokens,
           to_tsvector('english'::regconfig, u.keywords || E'\n' || u.indexed),
           to_tsvector('english'::regconfig, u.keywords)
      FROM unnest($4::integer[], $5::text[], $6::text[], $7::integer[], $8::integer[],
                  $9::integer[], $10::integer[], $11::integer[], $12::text[], $13::integer[],
                  $14::text[])
           AS u (position, title, text, tokens, line_start, line_end, char_start, char_end,
                 keywords, keyword_tokens, indexed)
    RETURNING passage_id, position, tokens, keyword_tokens, tsv
), embedded AS (
    INSERT INTO appliance.passage_embeddings (passage_id, tenant_id, collection, model, private,
                                              vectors)
    SELECT a.passage_id, $1, $2, $17::text, v.private, v.vectors
      FROM added a
           JOIN unnest($4::integer[], $15::bytea[], $16::boolean[]) AS v (position, vectors, private)
             ON v.position = a.position
     WHERE v.vectors IS NOT NULL AND $17::text IS NOT NULL
), counted AS (
    SELECT u.lexeme, count(*)::integer AS n
      FROM added a CROSS JOIN LATERAL unnest(tsvector_to_array(a.tsv)) AS u (lexeme)
     GROUP BY u.lexeme
), terms AS (
    INSERT INTO appliance.collection_terms AS t (tenant_id, collection, lexeme, passages)
    SELECT $1, $2, k.lexeme, k.n FROM counted k ORDER BY k.lexeme
    ON CONFLICT (tenant_id, collection, lexeme) DO UPDATE SET passages = t.passages + excluded.passages
), stats AS (
    UPDATE appliance.collections c
       SET version = nextval('appliance.collection_versions'),
           passages = c.passages + (SELECT count(*) FROM added),
           tokens = c.tokens + (SELECT coalesce(sum(a.tokens), 0) FROM added a),
           keyword_tokens = c.keyword_tokens
                            + (SELECT coalesce(sum(a.keyword_tokens), 0) FROM added a)
     WHERE c.tenant_id = $1 AND c.collection = $2
)
SELECT count(*) FROM added;

-- name: list_collections
-- Every collection of tenant $1 with its documents, passages and tokens.
SELECT c.collection, c.passages, c.tokens,
       (SELECT count(*) FROM appliance.documents d
         WHERE d.tenant_id = c.tenant_id AND d.collection = c.collection) AS documents
  FROM appliance.collections c
 WHERE c.tenant_id = $1
 ORDER BY c.collection;

-- name: search_passages
-- BM25F (k1 $4, b $5; title field weight $8 and b $9) of tenant $1's passages in collections $2 holding any lexeme of query $3; the best $7 of at most $6 tokens.
-- A lexeme's term frequency is its count in the text, normalised by the passage's length,
-- plus $8 times its count in the title field (keywords), normalised by the keywords' length;
-- then saturated once: idf * tf * (k1 + 1) / (tf + k1).
-- Each step is materialized so that the passages are scanned once, through the GIN index; the
-- document frequencies are read by one index probe per query lexeme, whatever the statistics.
WITH query AS MATERIALIZED (
    SELECT replace(plainto_tsquery('english'::regconfig, $3)::text, ' & ', ' | ')::tsquery AS tsq,
           tsvector_to_array(to_tsvector('english'::regconfig, $3)) AS lexemes
), corpus AS MATERIALIZED (
    SELECT sum(c.passages)::float8 AS n,
           sum(c.tokens)::float8 / nullif(sum(c.passages), 0) AS avgdl,
           sum(c.keyword_tokens)::float8 / nullif(sum(c.passages), 0) AS avgkl
      FROM appliance.collections c
     WHERE c.tenant_id = $1 AND c.collection = ANY ($2::text[])
), terms AS MATERIALIZED (
    SELECT l.lexeme, ln(1 + (k.n - f.df + 0.5) / (f.df + 0.5)) AS idf
      FROM query q
           CROSS JOIN LATERAL unnest(q.lexemes) AS l (lexeme)
           CROSS JOIN LATERAL (
               SELECT sum(t.passages)::float8 AS df FROM appliance.collection_terms t
                WHERE t.tenant_id = $1 AND t.collection = ANY ($2::text[])
                  AND t.lexeme = l.lexeme
           ) AS f
           CROSS JOIN corpus k
     WHERE f.df IS NOT NULL
), candidates AS MATERIALIZED (
    SELECT p.passage_id, p.tokens, p.keyword_tokens,
           ts_filter(setweight(p.tsv, 'A', q.lexemes), '{a}') AS matched,
           ts_filter(setweight(p.keyword_tsv, 'A', q.lexemes), '{a}') AS keyword_matched
      FROM query q
           JOIN appliance.passages p ON p.tsv @@ q.tsq
     WHERE p.tenant_id = $1 AND p.collection = ANY ($2::text[]) AND p.tokens <= $6
), scored AS (
    SELECT c.passage_id, sum(t.idf * f.tf * ($4::float8 + 1) / (f.tf + $4::float8)) AS score
      FROM candidates c
           CROSS JOIN corpus k
           CROSS JOIN LATERAL (
               SELECT m.lexeme,
                      cardinality(m.positions)
                      / (1 - $5::float8 + $5::float8 * c.tokens / k.avgdl)
                      + coalesce($8::float8 * cardinality(w.positions)
                                 / (1 - $9::float8
                                    + $9::float8 * c.keyword_tokens / nullif(k.avgkl, 0)),
                                 0) AS tf
                 FROM unnest(c.matched) AS m (lexeme, positions, weights)
                      LEFT JOIN unnest(c.keyword_matched) AS w (lexeme, positions, weights)
                             ON w.lexeme = m.lexeme
           ) AS f
           JOIN terms t ON t.lexeme = f.lexeme
     GROUP BY c.passage_id
     ORDER BY score DESC, c.passage_id
     LIMIT $7
)
SELECT s.passage_id, d.source, p.collection, p.position, p.title, p.text, p.tokens,
       p.line_start, p.line_end, s.score
  FROM scored s
       JOIN appliance.passages p ON p.passage_id = s.passage_id
       JOIN appliance.documents d ON d.document_id = p.document_id
 ORDER BY s.score DESC, s.passage_id;

-- name: list_passage_vectors
-- The vectors of model $3 of tenant $1's passages in collections $2, and whether each passage's definitions are all private.
SELECT e.passage_id, e.private, e.vectors
  FROM appliance.passage_embeddings e
 WHERE e.tenant_id = $1 AND e.collection = ANY ($2::text[]) AND e.model = $3;

-- name: get_passages
-- Tenant $1's passages whose ids are in $2, with the source they cite.
SELECT p.passage_id, d.source, p.collection, p.position, p.title, p.text, p.tokens,
       p.line_start, p.line_end
  FROM appliance.passages p
       JOIN appliance.documents d ON d.document_id = p.document_id
 WHERE p.tenant_id = $1 AND p.passage_id = ANY ($2::bigint[]);

-- name: list_collection_passages
-- Every passage of tenant $1's collections $2, in the order of their sources and positions.
SELECT p.passage_id, d.source, p.collection, p.position, p.title, p.text, p.tokens,
       p.line_start, p.line_end
  FROM appliance.passages p
       JOIN appliance.documents d ON d.document_id = p.document_id
 WHERE p.tenant_id = $1 AND p.collection = ANY ($2::text[])
 ORDER BY p.collection, d.source, p.position;

-- name: get_collection_versions
-- The version of each of tenant $1's collections $2 (bumped by every change of its passages).
SELECT c.collection, c.version
  FROM appliance.collections c
 WHERE c.tenant_id = $1 AND c.collection = ANY ($2::text[]);
