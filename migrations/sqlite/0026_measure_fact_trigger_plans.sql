-- PostgreSQL only (migrations/postgres-extra): the trigger of 0025 plans its UPDATE at
-- each call. Nothing changes on SQLite, whose triggers are planned per statement.
SELECT 1;
