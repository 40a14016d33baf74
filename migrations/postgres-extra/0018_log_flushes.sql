-- The batch writers commit without waiting for the log (`synchronous_commit = off`);
-- before answering, the gateway bumps a row here and commits that synchronously, and
-- PostgreSQL flushes its log through every commit before it. The bump is what makes
-- the flush: a transaction that writes nothing else (`SELECT pg_current_xact_id()`)
-- is committed without one. One row per slot (`pg_backend_pid() % 64`), so gateway
-- processes do not queue on one row.
CREATE TABLE log_flushes (
    slot INTEGER PRIMARY KEY,
    flushes BIGINT NOT NULL
);
