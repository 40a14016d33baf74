-- Every text column compares in byte order ("C"), whatever the database's locale. The
-- gateway's in-memory indexes (referral lists, keyset cursors over ids) order by bytes,
-- as SQLite does; under a locale such as en_US.UTF-8 PostgreSQL would order the same
-- ids differently ('a' before 'B'), and a cursor from one order would skip or repeat
-- rows in the other. The collation changes no stored value; the indexes are rebuilt.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.table_name,
               string_agg(format('ALTER COLUMN %I TYPE text COLLATE "C"', c.column_name), ', ') AS alters
        FROM information_schema.columns c
        JOIN information_schema.tables b
          ON b.table_schema = c.table_schema AND b.table_name = c.table_name
        WHERE c.table_schema = current_schema()
          AND b.table_type = 'BASE TABLE'
          AND c.data_type = 'text'
          AND c.table_name <> '_sqlx_migrations'
        GROUP BY c.table_name
    LOOP
        EXECUTE format('ALTER TABLE %I %s', t.table_name, t.alters);
    END LOOP;
END $$;

-- Its only use was LIKE 'prefix%' under a non-C collation, and string search binds its
-- pattern as a parameter, which no index plan can use: one insert per string row saved.
DROP INDEX search_strings_prefix;
