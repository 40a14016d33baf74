-- What outcome measures and the programme's report count (`measures::facts`), written
-- with the resource version that states it: a screen and its result, a referral or
-- SDOH procedure of a domain, a CBO's first contact, a stay or ED visit, a birth date,
-- and each step of a referral's life (`r:…`, with its organisation and the reason or
-- outcome code in `detail`). `patient_id` is resolved to a
-- person through `person_identifiers` when a measure is evaluated, so a merge needs
-- no rewrite here. `at` and `until` are microseconds since the epoch.
CREATE TABLE measure_facts (
    res_type TEXT NOT NULL,
    res_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    domain TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    until BIGINT,
    value BIGINT,
    organization TEXT,
    detail TEXT,
    PRIMARY KEY (res_type, res_id, kind, domain)
);
CREATE INDEX measure_facts_kind_at ON measure_facts (kind, domain, at);
CREATE INDEX measure_facts_patient ON measure_facts (patient_id, kind);
