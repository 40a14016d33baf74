-- Coordination-platform mode: each Task an EHR's own FHIR server assigned to the
-- gateway, and the local Task (partOf it) that carries the referral here.
-- `pushed_version` is the local Task version last written back to the EHR: a local
-- version above it is a change still to push.
CREATE TABLE ehr_links (
    ehr TEXT NOT NULL,
    remote_task TEXT NOT NULL,
    local_task TEXT NOT NULL,
    pushed_version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (ehr, remote_task)
);
CREATE UNIQUE INDEX ehr_links_local ON ehr_links (local_task);
