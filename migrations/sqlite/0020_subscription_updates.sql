-- Subscriptions can be updated (PUT). `version` is bumped by each update, so a
-- handshake that finishes after one does not undo it; `error_since` is when the
-- subscription went into error: its handshake is sent again every 30 s for the
-- retry window after that.
ALTER TABLE subscriptions ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE subscriptions ADD COLUMN error_since INTEGER;
-- A client lists its own subscriptions (search, type-level `$status`).
CREATE INDEX subscriptions_by_client ON subscriptions (client_id, id);
