-- Connectors to CBO case-management systems (mappings/connectors/) share the webhook
-- outbox: a connector is an endpoint row whose `connector` is its rule id, kept in step
-- with the mappings at start and on reload ('inactive' while its environment is
-- incomplete, 'retired' once its file is gone).
ALTER TABLE webhook_endpoints ADD COLUMN connector TEXT;

-- The case each referral became in a connector's system: how a status the system
-- reports finds its referral.
CREATE TABLE connector_cases (
    connector TEXT NOT NULL,
    case_id TEXT NOT NULL,
    referral_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (connector, case_id)
);
CREATE UNIQUE INDEX connector_cases_referral ON connector_cases (connector, referral_id);
