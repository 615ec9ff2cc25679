-- Cron schedules: each starts a workflow for a tenant at every slot of its cron expression, read
-- in its time zone. The slots themselves are computed in Python (cronsim, Debian cron's DST
-- rules); this table keeps the state every node shares:
--
--   next_fire_at  the next slot (an instant), the one a node due to fire locks the row for;
--   last_slot_at  the newest slot handled (fired, skipped or missed);
--   last_task_id  the newest task the schedule started (a slot or `run-now`);
--   open_tasks    the tasks it started that were not ended when it last looked: the overlap
--                 policy checks these, so it never scans the schedule's history;
--   missed_slots  slots that passed while no node fired them and the catch-up policy dropped.
--
-- Exactly once per slot: a node fires a slot in one transaction that locks the schedule's row
-- (FOR UPDATE SKIP LOCKED), submits the task under the idempotency key
-- 'schedule:<id>:<slot in UTC>', records the slot and moves next_fire_at. A node that dies
-- before its commit leaves nothing behind and the row unlocked; one that races (clock skew, a
-- stale read) meets the task's unique key and the slot's primary key.
--
-- `origin` says where the definition comes from: 'config' (`[[schedules]]`, written at every
-- daemon start) or 'command' (`appliance schedules add`). Only the definition comes from the
-- config; paused and the firing state are Postgres's alone.

CREATE TABLE appliance.schedules (
    schedule_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     text NOT NULL REFERENCES appliance.tenants,
    name          text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    cron          text NOT NULL CHECK (length(cron) BETWEEN 1 AND 200),
    timezone      text NOT NULL CHECK (length(timezone) BETWEEN 1 AND 100),
    workflow      text NOT NULL CHECK (length(workflow) BETWEEN 1 AND 200),
    input         json NOT NULL,
    catchup       text NOT NULL CHECK (catchup IN ('skip', 'latest', 'all')),
    catchup_limit integer NOT NULL CHECK (catchup_limit BETWEEN 1 AND 100),
    overlap       text NOT NULL CHECK (overlap IN ('skip', 'allow', 'cancel-previous')),
    origin        text NOT NULL CHECK (origin IN ('config', 'command')),
    paused        boolean NOT NULL DEFAULT false,
    next_fire_at  timestamptz NOT NULL,
    last_slot_at  timestamptz,
    last_task_id  bigint REFERENCES appliance.tasks ON DELETE SET NULL,
    open_tasks    bigint[] NOT NULL DEFAULT '{}',
    missed_slots  bigint NOT NULL DEFAULT 0,
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE INDEX schedules_due ON appliance.schedules (next_fire_at) WHERE NOT paused;

-- What became of each slot a node handled: 'fired' (its task), 'skipped' (the overlap policy:
-- an earlier task was still running), 'failed' (the task could not be submitted, such as a
-- workflow this node does not register), 'run-now' (started by `appliance schedules run-now`,
-- keyed by the time it was asked for).
CREATE TABLE appliance.schedule_slots (
    schedule_id bigint NOT NULL REFERENCES appliance.schedules ON DELETE CASCADE,
    slot_at     timestamptz NOT NULL,
    tenant_id   text NOT NULL REFERENCES appliance.tenants,
    outcome     text NOT NULL CHECK (outcome IN ('fired', 'skipped', 'failed', 'run-now')),
    task_id     bigint REFERENCES appliance.tasks ON DELETE SET NULL,
    reason      text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, slot_at)
);

CREATE INDEX schedule_slots_task ON appliance.schedule_slots (task_id) WHERE task_id IS NOT NULL;

-- Schedules and their slots are tenant rows: row-level security as on every tenant table (0011).
SELECT appliance.enforce_tenant_isolation();
