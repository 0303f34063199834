-- hermes_tx outbox, version 2: capturing a table's changes.
--
-- hermes-tx capture attaches capture() to a table as three statement-level
-- AFTER triggers (INSERT, UPDATE, DELETE) with transition tables and the
-- arguments (topic, primary key column, ...).  Each statement's changed
-- rows become changes in one INSERT, one per row, keyed by the primary key:
--   single column: the value as text (as ->> renders it from the row's JSON);
--   composite:     the JSON array of the values in key order, as text.
-- For an UPDATE, old and new rows are paired by key: a key only in the old
-- rows is a DELETE, a key only in the new rows an INSERT (so changing a
-- primary key is a DELETE of the old key and an INSERT of the new one).
--
-- Per-key order without emit's advisory lock: the captured table's own row
-- locks and primary key already make writers of one row wait for each
-- other until commit, and the ids are drawn at the end of each statement,
-- after those waits.  (A lock per key would fill the server's lock table
-- on a bulk UPDATE.)

CREATE FUNCTION {schema}.capture_key(r jsonb, columns text[], OUT key_text text, OUT key_json jsonb)
LANGUAGE sql
IMMUTABLE
AS $fn$
    SELECT CASE WHEN cardinality(columns) = 1 THEN r ->> columns[1]
                ELSE (SELECT jsonb_agg(r -> u.c ORDER BY u.i)
                      FROM unnest(columns) WITH ORDINALITY u (c, i))::text
           END,
           (SELECT jsonb_object_agg(c, r -> c) FROM unnest(columns) c)
$fn$;

-- Called only when a key came out NULL: a key column was renamed or dropped
-- after hermes-tx capture.
CREATE FUNCTION {schema}.capture_lost_key(tbl text, columns text[])
RETURNS text
LANGUAGE plpgsql
AS $fn$
BEGIN
    RAISE EXCEPTION 'hermes capture: % has no primary key column(s) % any more; run hermes-tx capture again',
        tbl, array_to_string(columns, ', ')
        USING ERRCODE = 'undefined_column';
END
$fn$;

CREATE FUNCTION {schema}.capture()
RETURNS trigger
LANGUAGE plpgsql
AS $fn$
DECLARE
    topic text := TG_ARGV[0];
    columns text[] := TG_ARGV[1:TG_NARGS - 1];
    tbl text := quote_ident(TG_TABLE_SCHEMA) || '.' || quote_ident(TG_TABLE_NAME);
    n bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {schema}.outbox (topic, key, payload)
        SELECT topic, coalesce(k.key_text, {schema}.capture_lost_key(tbl, columns)),
               jsonb_build_object('table', tbl, 'op', 'INSERT', 'key', k.key_json,
                                  'old', NULL, 'new', x.r)
        FROM (SELECT to_jsonb(t) AS r FROM capture_new t) x
        CROSS JOIN LATERAL {schema}.capture_key(x.r, columns) k;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {schema}.outbox (topic, key, payload)
        SELECT topic, coalesce(k.key_text, {schema}.capture_lost_key(tbl, columns)),
               jsonb_build_object('table', tbl, 'op', 'DELETE', 'key', k.key_json,
                                  'old', x.r, 'new', NULL)
        FROM (SELECT to_jsonb(t) AS r FROM capture_old t) x
        CROSS JOIN LATERAL {schema}.capture_key(x.r, columns) k;
    ELSE
        INSERT INTO {schema}.outbox (topic, key, payload)
        SELECT topic, coalesce(c.key_text, {schema}.capture_lost_key(tbl, columns)),
               jsonb_build_object('table', tbl,
                                  'op', CASE WHEN c.old_row IS NULL THEN 'INSERT'
                                             WHEN c.new_row IS NULL THEN 'DELETE'
                                             ELSE 'UPDATE' END,
                                  'key', c.key_json, 'old', c.old_row, 'new', c.new_row)
        FROM (
            SELECT coalesce(nk.key_text, ok.key_text) AS key_text,
                   coalesce(nk.key_json, ok.key_json) AS key_json,
                   ok.r AS old_row, nk.r AS new_row
            FROM (SELECT x.r, k.key_text, k.key_json
                  FROM (SELECT to_jsonb(t) AS r FROM capture_old t) x
                  CROSS JOIN LATERAL {schema}.capture_key(x.r, columns) k) ok
            FULL JOIN
                 (SELECT x.r, k.key_text, k.key_json
                  FROM (SELECT to_jsonb(t) AS r FROM capture_new t) x
                  CROSS JOIN LATERAL {schema}.capture_key(x.r, columns) k) nk
            ON ok.key_text = nk.key_text
            -- deletes of old keys first, as a row's DELETE comes before its INSERT
            ORDER BY nk.r IS NOT NULL
        ) c;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify({channel_literal}, topic);
    END IF;
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION {schema}.capture() IS
    'hermes_tx: statement trigger emitting one change per changed row; attach with hermes-tx capture';
