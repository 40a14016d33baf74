-- `/metrics` counts failed deliveries and open identity conflicts at every scrape;
-- these keep the counts off a scan of tables that only grow.
CREATE INDEX webhook_deliveries_failed ON webhook_deliveries (endpoint_id) WHERE status = 'failed';
CREATE INDEX identity_conflicts_open ON identity_conflicts (created_at) WHERE resolved_at IS NULL;
