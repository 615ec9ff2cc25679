-- name: get_latest_agent
-- The newest version of a tenant's agent.
SELECT tenant_id, name, version, persona, model, tools, max_tokens, max_turns, retrieval,
       content_hash, created_by, created_at
  FROM appliance.agents WHERE tenant_id = $1 AND name = $2
 ORDER BY version DESC LIMIT 1;

-- name: get_agent_version
-- One version of a tenant's agent.
SELECT tenant_id, name, version, persona, model, tools, max_tokens, max_turns, retrieval,
       content_hash, created_by, created_at
  FROM appliance.agents WHERE tenant_id = $1 AND name = $2 AND version = $3;

-- name: insert_agent_version
-- Add a version unless the newest one has the same content; returns the version that holds it and whether it is new.
WITH latest AS (
    SELECT a.version, a.content_hash FROM appliance.agents a
     WHERE a.tenant_id = $1 AND a.name = $2 ORDER BY a.version DESC LIMIT 1
), inserted AS (
    INSERT INTO appliance.agents (tenant_id, name, version, persona, model, tools, max_tokens,
                                  max_turns, retrieval, content_hash, created_by)
    SELECT $1, $2, coalesce((SELECT version FROM latest), 0) + 1, $3, $4, $5::text::jsonb, $6,
           $7, $8::text::jsonb, $9, $10
     WHERE NOT EXISTS (SELECT 1 FROM latest WHERE content_hash = $9)
    RETURNING version
)
SELECT version, true AS created FROM inserted
UNION ALL
SELECT version, false FROM latest WHERE content_hash = $9;

-- name: list_agents
-- The newest version of each of a tenant's agents.
SELECT DISTINCT ON (name) tenant_id, name, version, persona, model, tools, max_tokens, max_turns,
       retrieval, content_hash, created_by, created_at
  FROM appliance.agents WHERE tenant_id = $1
 ORDER BY name, version DESC;
