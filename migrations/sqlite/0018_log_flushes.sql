-- PostgreSQL only (migrations/postgres-extra/0018_log_flushes.sql): SQLite's WAL is
-- flushed by an fsync of its file.
-- sqlite only {
SELECT 1;
-- }
