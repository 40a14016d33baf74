-- Which organisation created a resource, when an organisation-bound client did: such a
-- client may change only what its organisation made (README, "Who may write what").
-- Resources made by unbound clients, feeds or the gateway itself have no row.
CREATE TABLE resource_authors (
    res_type TEXT NOT NULL,
    res_id TEXT NOT NULL,
    organization TEXT NOT NULL,
    PRIMARY KEY (res_type, res_id)
);
