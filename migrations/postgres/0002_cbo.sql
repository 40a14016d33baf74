-- The CBO face: what a referral list shows without reading FHIR resources, the event
-- feed's payload, idempotency keys and gateway-scoped client references.

-- `version` is the Task's versionId (the referral's ETag); `respond_by` comes from
-- Task.restriction.period.end; `client_ref` is what the CBO sees instead of an MRN.
ALTER TABLE referrals ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE referrals ADD COLUMN urgency TEXT NOT NULL DEFAULT 'routine';
ALTER TABLE referrals ADD COLUMN respond_by BIGINT;
ALTER TABLE referrals ADD COLUMN client_ref TEXT;
ALTER TABLE referrals ADD COLUMN domain TEXT;
-- The expiry sweep looks only at pending referrals that have a deadline.
CREATE INDEX referrals_due ON referrals (respond_by) WHERE status = 'pending';

ALTER TABLE events ADD COLUMN id TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN status TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
CREATE INDEX events_referral ON events (referral_id, seq);

-- Events at or below `pruned_through` were removed by retention; older cursors get 410.
ALTER TABLE tenant_counters ADD COLUMN pruned_through BIGINT NOT NULL DEFAULT 0;

-- Idempotency-Key: the first response to a key, replayed for a retry with the same
-- request (`fingerprint`), refused for a different one. Kept for days, not forever.
CREATE TABLE idempotency_keys (
    organization TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status BIGINT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (organization, idem_key)
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);

-- A gateway-scoped pseudonym per Patient, so CBOs never see a hospital identifier.
CREATE TABLE clients (
    patient_id TEXT PRIMARY KEY,
    client_ref TEXT NOT NULL UNIQUE
);
