-- Outgoing webhooks: the outbox's events delivered to HTTP endpoints the operator configured
-- (`[[outbox.webhooks]]`), each endpoint with its own queue.
--
-- The relay's webhook sink accepts an event by writing one delivery per endpoint whose filters
-- (event types, tenants) match it, in the relay's own round (at least once: a delivery that is
-- already there is left as it is). Each endpoint's deliveries then go out on their own, so an
-- endpoint that is down holds back only its own queue: in event order per task (a delivery
-- waiting to be retried holds back the later ones of its task, at that endpoint), retried with
-- backoff, never dropped; `attempts`, `last_error` and the age of the oldest say how it goes
-- (`appliance doctor`, /metrics). A delivery goes with its event (ON DELETE CASCADE).

CREATE TABLE appliance.outgoing_deliveries (
    endpoint        text NOT NULL,
    event_seq       bigint NOT NULL REFERENCES appliance.outbox_events ON DELETE CASCADE,
    tenant_id       text NOT NULL,
    task_id         bigint,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    PRIMARY KEY (endpoint, event_seq)
);
CREATE INDEX outgoing_deliveries_pending ON appliance.outgoing_deliveries (endpoint, event_seq)
    WHERE delivered_at IS NULL;

-- Deliveries are tenant rows: row-level security like every other tenant table (0011).
SELECT appliance.enforce_tenant_isolation();
