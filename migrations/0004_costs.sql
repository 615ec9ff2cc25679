-- Costs: model prices by effective date, the ledger of model calls, and budgets.
--
-- Prices are reference data shared by every tenant: one row per model, token category and
-- effective date, never updated; a price change is a new row with a later effective date, and
-- a call is priced at the rows in effect on its (UTC) date. No multiplier lives in code: cache
-- write and read prices are rows like the input price (0.1x is not universal; Haiku 3's 5m
-- write is $0.30, not 1.25 x $0.25).
--
-- The ledger keeps every usage counter as the API reported it (cache tokens are never folded
-- into input_tokens) and the cost and the uncached cost (every prompt token at the input price)
-- computed when the call is recorded, so a later price change never re-prices history.

CREATE TABLE appliance.prices (
    model          text NOT NULL CHECK (model ~ '^\S{1,200}$'),
    category       text NOT NULL CHECK (category IN
                       ('input', 'cache_write_5m', 'cache_write_1h', 'cache_read', 'output')),
    effective_from date NOT NULL,
    usd_per_mtok   numeric NOT NULL CHECK (usd_per_mtok >= 0),
    source         text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, category, effective_from)
);

-- Anthropic's published prices (USD per million tokens), from the pricing page
-- platform.claude.com/docs/en/about-claude/pricing (Sonnet 4.x from its zh-CN copy).
INSERT INTO appliance.prices (model, category, effective_from, usd_per_mtok, source)
SELECT m.model, c.category, DATE '2025-01-01', c.usd_per_mtok, m.source
  FROM (VALUES
        ('claude-opus-4-8',   5,    6.25,  10,   0.50, 25,   'platform.claude.com/docs/en/about-claude/pricing'),
        ('claude-opus-4-7',   5,    6.25,  10,   0.50, 25,   'platform.claude.com/docs/en/about-claude/pricing'),
        ('claude-opus-4-6',   5,    6.25,  10,   0.50, 25,   'platform.claude.com/docs/en/about-claude/pricing'),
        ('claude-opus-4-5',   5,    6.25,  10,   0.50, 25,   'platform.claude.com/docs/en/about-claude/pricing'),
        ('claude-opus-4-1',   15,   18.75, 30,   1.50, 75,   'platform.claude.com/docs/en/about-claude/pricing'),
        ('claude-opus-4',     15,   18.75, 30,   1.50, 75,   'platform.claude.com/docs/en/about-claude/pricing'),
        ('claude-sonnet-4-6', 3,    3.75,  6,    0.30, 15,   'platform.claude.com/docs/en/about-claude/pricing (zh-CN)'),
        ('claude-sonnet-4-5', 3,    3.75,  6,    0.30, 15,   'platform.claude.com/docs/en/about-claude/pricing (zh-CN)'),
        ('claude-sonnet-4',   3,    3.75,  6,    0.30, 15,   'platform.claude.com/docs/en/about-claude/pricing (zh-CN)'),
        ('claude-haiku-4-5',  1,    1.25,  2,    0.10, 5,    'platform.claude.com/docs/en/about-claude/pricing'),
        ('claude-3-5-haiku',  0.80, 1,     1.6,  0.08, 4,    'platform.claude.com/docs/en/about-claude/pricing'),
        ('claude-3-haiku',    0.25, 0.30,  0.50, 0.03, 1.25, 'platform.claude.com/docs/en/about-claude/pricing')
       ) AS m (model, p_input, p_write_5m, p_write_1h, p_read, p_output, source)
 CROSS JOIN LATERAL (VALUES
        ('input', m.p_input), ('cache_write_5m', m.p_write_5m), ('cache_write_1h', m.p_write_1h),
        ('cache_read', m.p_read), ('output', m.p_output)
       ) AS c (category, usd_per_mtok);

-- One row per model call. task_id and position are NULL for a call made outside a task; agent
-- and agent_version name the definition that made it (no foreign key: the ledger outlives
-- definitions). cache_note is the caller's word on caching, e.g. why the stable prefix was not
-- cacheable (shorter than the model's minimum).
CREATE TABLE appliance.model_calls (
    call_id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id                   text NOT NULL REFERENCES appliance.tenants,
    task_id                     bigint REFERENCES appliance.tasks,
    position                    integer CHECK (position >= 0),
    agent                       text,
    agent_version               integer CHECK (agent_version >= 1),
    model                       text NOT NULL,
    request_id                  text,
    started_at                  timestamptz NOT NULL,
    latency_ms                  double precision NOT NULL CHECK (latency_ms >= 0),
    input_tokens                integer NOT NULL CHECK (input_tokens >= 0),
    cache_creation_input_tokens integer NOT NULL CHECK (cache_creation_input_tokens >= 0),
    cache_write_5m_tokens       integer NOT NULL CHECK (cache_write_5m_tokens >= 0),
    cache_write_1h_tokens       integer NOT NULL CHECK (cache_write_1h_tokens >= 0),
    cache_read_input_tokens     integer NOT NULL CHECK (cache_read_input_tokens >= 0),
    output_tokens               integer NOT NULL CHECK (output_tokens >= 0),
    cost_usd                    numeric NOT NULL CHECK (cost_usd >= 0),
    uncached_cost_usd           numeric NOT NULL CHECK (uncached_cost_usd >= 0),
    cache_note                  text,
    recorded_at                 timestamptz NOT NULL DEFAULT now()
);

-- The month's spend of a tenant (budgets, reports by tenant and day) and a task's spend.
CREATE INDEX model_calls_tenant_started ON appliance.model_calls (tenant_id, started_at);
CREATE INDEX model_calls_task ON appliance.model_calls (task_id) WHERE task_id IS NOT NULL;

-- Budgets in USD: scope 'month' limits a tenant's spend in each calendar month (UTC); scope
-- 'task' limits one task's spend (task_id), or each task of the tenant that has no budget of
-- its own (task_id NULL). task_key stands for task_id in the key (0 for NULL: task ids start
-- at 1), so that one upsert serves every scope.
CREATE TABLE appliance.budgets (
    tenant_id  text NOT NULL REFERENCES appliance.tenants,
    scope      text NOT NULL CHECK (scope IN ('month', 'task')),
    task_id    bigint REFERENCES appliance.tasks ON DELETE CASCADE,
    task_key   bigint NOT NULL GENERATED ALWAYS AS (coalesce(task_id, 0)) STORED,
    usd_limit  numeric NOT NULL CHECK (usd_limit >= 0),
    set_by     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, scope, task_key),
    CHECK (scope = 'task' OR task_id IS NULL)
);
