-- The community resource directory (`directory`): Open Referral HSDS 3.0 entities per
-- tenant (a named directory; `default` is the one `/hsds/` serves). `body` is the
-- entity's HSDS JSON exactly as served (nested parts included), so a round trip is
-- lossless; the other columns exist for lookup, paging and search only. `digest` is
-- SHA-256 of the body with its object keys sorted: a re-import of an equal entity is
-- "unchanged". `kind` is service, organization, service_at_location, location,
-- taxonomy or taxonomy_term. `search` is the lower-cased name, alternate name and
-- description. `last_modified` is HSDS's own, as sent.
CREATE TABLE directory_entities (
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    organization_id TEXT,
    taxonomy_id TEXT,
    parent_id TEXT,
    search TEXT NOT NULL,
    last_modified TEXT,
    digest TEXT NOT NULL,
    body TEXT NOT NULL,
    imported_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, kind, id)
);
CREATE INDEX directory_entities_organization ON directory_entities (tenant, kind, organization_id);
-- The taxonomy terms an entity is classified by (its attributes), for
-- `taxonomy_term_id` and `taxonomy_id` filters.
CREATE TABLE directory_terms (
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    term_id TEXT NOT NULL,
    taxonomy_id TEXT,
    PRIMARY KEY (tenant, kind, id, term_id)
);
CREATE INDEX directory_terms_term ON directory_terms (tenant, kind, term_id);
CREATE INDEX directory_terms_taxonomy ON directory_terms (tenant, kind, taxonomy_id);
