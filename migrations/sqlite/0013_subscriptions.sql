-- FHIR Subscriptions (R4 Subscriptions Backport). `resource` is the Subscription as
-- its client sent it, with id, meta and status kept current. Notifications share the
-- webhook outbox: an endpoint row `subscription:<id>` (active once the handshake
-- succeeded) and one delivery per event, `event_seq` being the event number.
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    resource TEXT NOT NULL,
    status TEXT NOT NULL,
    events_since_start INTEGER NOT NULL DEFAULT 0,
    last_sent_at INTEGER,
    created_at INTEGER NOT NULL
);

-- Every event, kept so that `$events` can fill a gap the subscriber found.
CREATE TABLE subscription_events (
    subscription_id TEXT NOT NULL,
    event_number INTEGER NOT NULL,
    focus TEXT NOT NULL,
    -- The version of the focus the event is about (a full-resource notification
    -- shows that version, not a later one).
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (subscription_id, event_number)
);
