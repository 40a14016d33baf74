-- PostgreSQL only (migrations/postgres-extra/0016_byte_order.sql): text keys compare
-- in byte order there too. SQLite's default collation already does.
-- sqlite only {
SELECT 1;
-- }
