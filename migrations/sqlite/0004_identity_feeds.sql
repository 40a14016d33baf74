-- Identity: persons, the identifiers that name them, merges, and conflicts to review;
-- HIE feeds: every inbound message, raw, for deduplication, dead letters and replay.

-- One human across sources. `client_ref` is what CBOs see and survives merges; a
-- retired person points at its survivor.
CREATE TABLE persons (
    id TEXT PRIMARY KEY,
    client_ref TEXT NOT NULL UNIQUE,
    merged_into TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Identifier (system URI, value) → person. The primary key makes "two messages for the
-- same new patient create one person" a constraint, not a check. A FHIR Patient
-- resource is itself an identifier (system `urn:crossway:patient`, value its id), so a
-- merge moves resources and hospital identifiers alike. `retired` marks an alias kept
-- after a merge, so late messages for the old identifier still resolve.
CREATE TABLE person_identifiers (
    system TEXT NOT NULL,
    value TEXT NOT NULL,
    person_id TEXT NOT NULL,
    id_type TEXT,
    source TEXT NOT NULL,
    retired INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (system, value)
);
CREATE INDEX person_identifiers_person ON person_identifiers (person_id);

-- Every merge, with what it moved, so an unlink can undo exactly that.
CREATE TABLE person_merges (
    id TEXT PRIMARY KEY,
    survivor TEXT NOT NULL,
    retired TEXT NOT NULL,
    source TEXT NOT NULL,
    cause TEXT NOT NULL,
    moved TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    undone_at INTEGER
);
CREATE INDEX person_merges_retired ON person_merges (retired);

-- Bumped by every merge and unmerge, so a process with an in-process identity cache
-- notices changes another process (an operator command) committed.
CREATE TABLE identity_generation (
    id INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL
);
INSERT INTO identity_generation (id, generation) VALUES (1, 0);

-- Messages that named several persons: applied to none, waiting for a person to decide.
CREATE TABLE identity_conflicts (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    persons TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    resolved_at INTEGER
);

-- Every inbound feed message as received. The primary key is the deduplication key:
-- (MSH-4 sending facility, MSH-10 control id) or (Bundle.identifier system, value).
-- `status`: applied, ignored (by rule), dead (parsed, not applicable: replayable),
-- conflict (identity review). Dead letters are never pruned automatically.
CREATE TABLE inbound_messages (
    source TEXT NOT NULL,
    control_id TEXT NOT NULL,
    id TEXT NOT NULL UNIQUE,
    format TEXT NOT NULL,
    event TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    body TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (source, control_id)
);
CREATE INDEX inbound_messages_status ON inbound_messages (status, received_at);

-- Existing client references become persons named by their Patient resource.
INSERT INTO persons (id, client_ref, created_at, updated_at)
    SELECT client_ref, client_ref, 0, 0 FROM clients;
INSERT INTO person_identifiers (system, value, person_id, source, created_at)
    SELECT 'urn:crossway:patient', patient_id, client_ref, 'fhir', 0 FROM clients;
DROP TABLE clients;

-- A merge moves the open referrals of the retired person's client.
CREATE INDEX referrals_client ON referrals (client_ref);
