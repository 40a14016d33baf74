-- CBO webhooks: endpoints and one delivery per (endpoint, event), fanned out in the
-- transaction that writes the event.

-- `event_types`: '*' or the subscribed types, space-separated with a space at each end
-- (so that LIKE '% type %' matches whole names). Secrets are kept as issued: signing
-- needs them. `previous_secret` signs too until `previous_expires_at` (rotation).
-- `failing_since`: first failure of the current run of failures.
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    url TEXT NOT NULL,
    description TEXT NOT NULL,
    event_types TEXT NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_expires_at BIGINT,
    status TEXT NOT NULL,
    failing_since BIGINT,
    created_at BIGINT NOT NULL,
    disabled_at BIGINT
);
CREATE INDEX webhook_endpoints_org ON webhook_endpoints (organization_id, status);

-- `event_seq` is the event's sequence in its organisation's feed (negative for test
-- events, whose body is in `payload`). A worker claims a delivery by setting
-- `claimed_until` in the future; a crashed worker's claims expire.
CREATE TABLE webhook_deliveries (
    endpoint_id TEXT NOT NULL,
    organization TEXT NOT NULL,
    event_seq BIGINT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    claimed_until BIGINT NOT NULL DEFAULT 0,
    last_attempt_at BIGINT,
    last_status BIGINT,
    last_error TEXT,
    payload TEXT,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT,
    PRIMARY KEY (endpoint_id, event_seq)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
