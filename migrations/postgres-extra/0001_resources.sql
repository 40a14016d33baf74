
-- Prefix search (LIKE 'abc%') needs a pattern-ops index under a non-C collation.
CREATE INDEX search_strings_prefix ON search_strings (res_type, param, value text_pattern_ops);

-- Commit order shared by every gateway process.
CREATE SEQUENCE resource_seq;
