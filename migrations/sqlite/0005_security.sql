-- Security: registered clients and their credentials, replay protection for SMART
-- client assertions, CBO tenants registered at run time, and the audit trail.

-- One integration: an EHR system (SMART Backend Services, public keys) or a CBO
-- (client secret, API keys). `organization_id` binds the credential to one
-- organisation; `scopes` is what it may ever be granted (space-separated).
CREATE TABLE auth_clients (
    client_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    organization_id TEXT,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    jwks TEXT,
    jwks_url TEXT,
    secret_hash TEXT,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

-- API keys are random 256-bit secrets, so a fast hash is enough (a password hash
-- would cost every request tens of milliseconds for no gain). `key_id` is the public
-- part of the key and finds the row.
CREATE TABLE auth_api_keys (
    key_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX auth_api_keys_client ON auth_api_keys (client_id);

-- Client-assertion `jti`s seen until they expire: the key makes a replay a
-- constraint violation in every gateway process sharing the store.
CREATE TABLE auth_jti (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
);

-- Organisations made CBO tenants by registering a credential for them
-- (`crossway clients add cbo --org …`), beside those in the config file. A gateway
-- process that sees `adopted_at` empty makes referrals of the Tasks already addressed
-- to the organisation, then sets it.
CREATE TABLE tenants (
    organization_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    identifiers TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    adopted_at INTEGER
);

-- Every read or change of personal data. Append-only: the triggers below refuse
-- UPDATE and DELETE. `id` is a UUIDv7, so it sorts by time.
CREATE TABLE audit_events (
    id TEXT PRIMARY KEY,
    recorded_at INTEGER NOT NULL,
    client_id TEXT NOT NULL,
    organization_id TEXT,
    face TEXT NOT NULL,
    action TEXT NOT NULL,
    entity TEXT NOT NULL,
    detail TEXT NOT NULL,
    outcome INTEGER NOT NULL,
    trace_id TEXT NOT NULL
);
-- One index: a row is written per read, so every index is paid for on the read path.
-- Queries by client or entity filter the rows of a time range.
CREATE INDEX audit_events_time ON audit_events (recorded_at);

-- sqlite only {
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
-- }
