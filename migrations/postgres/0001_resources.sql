-- Every version of every resource, exactly as stored (id and meta stamped).
CREATE TABLE resource_versions (
    res_type TEXT NOT NULL,
    res_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    -- The search index rows this version produced, so that exactly those rows are
    -- removed when it is replaced (no per-table "owner" index to maintain). Before
    -- `body`, so reading it does not walk the body's overflow pages.
    index_rows TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (res_type, res_id, version)
);

-- The current version of each logical resource; `seq` orders commits for paging.
CREATE TABLE resources (
    res_type TEXT NOT NULL,
    res_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    PRIMARY KEY (res_type, res_id)
);
-- Search pages walk this index; `seq` breaks ties between equal timestamps.
CREATE INDEX resources_type_updated ON resources (res_type, last_updated, seq);

-- Search indexes hold rows for current versions only. Each table's primary key is
-- the lookup path (type, parameter, value → ids), which is the only index most of
-- them need: every index entry is a B-tree insert on the write path.
CREATE TABLE search_tokens (
    res_type TEXT NOT NULL,
    param TEXT NOT NULL,
    code TEXT NOT NULL,
    system TEXT NOT NULL,
    res_id TEXT NOT NULL,
    PRIMARY KEY (res_type, param, code, system, res_id)
);

-- `target` is `Type/id` for local references, else the absolute URL.
CREATE TABLE search_refs (
    res_type TEXT NOT NULL,
    param TEXT NOT NULL,
    target TEXT NOT NULL,
    res_id TEXT NOT NULL,
    PRIMARY KEY (res_type, param, target, res_id)
);

CREATE TABLE search_strings (
    res_type TEXT NOT NULL,
    param TEXT NOT NULL,
    value TEXT NOT NULL,
    res_id TEXT NOT NULL,
    PRIMARY KEY (res_type, param, value, res_id)
);

CREATE TABLE search_dates (
    res_type TEXT NOT NULL,
    param TEXT NOT NULL,
    lo BIGINT NOT NULL,
    hi BIGINT NOT NULL,
    res_id TEXT NOT NULL,
    PRIMARY KEY (res_type, param, lo, hi, res_id)
);

-- A referral exists when a referral Task is owned by a known organisation.
CREATE TABLE referrals (
    id TEXT PRIMARY KEY,
    organization TEXT NOT NULL,
    task_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX referrals_org ON referrals (organization, updated_at, id);

-- Per-organisation ordered event feed (the source for webhooks and /events).
CREATE TABLE events (
    organization TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    referral_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (organization, seq)
);

CREATE TABLE tenant_counters (
    organization TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);

-- Prefix search (LIKE 'abc%') needs a pattern-ops index under a non-C collation.
CREATE INDEX search_strings_prefix ON search_strings (res_type, param, value text_pattern_ops);

-- Commit order shared by every gateway process.
CREATE SEQUENCE resource_seq;
