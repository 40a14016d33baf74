-- Coordination-platform mode that cannot miss nor stall (issue 36).
-- Per link: the EHR's Task version last read (a poll's overlap window skips what it has
-- seen), write-back failures with their backoff and the server's diagnostics (for
-- `crossway ehr stuck` and the metrics), and when the EHR's Task was found gone.
ALTER TABLE ehr_links ADD COLUMN remote_version TEXT;
ALTER TABLE ehr_links ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ehr_links ADD COLUMN next_attempt_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ehr_links ADD COLUMN last_attempt_at INTEGER;
ALTER TABLE ehr_links ADD COLUMN last_error TEXT;
ALTER TABLE ehr_links ADD COLUMN gone_at INTEGER;
-- Per EHR server: the newest `meta.lastUpdated` seen (microseconds; the next poll asks
-- from it less the overlap window) and when all open referrals were last reconciled.
CREATE TABLE ehr_watermarks (
    ehr TEXT PRIMARY KEY,
    last_updated INTEGER NOT NULL,
    reconciled_at INTEGER NOT NULL
);
