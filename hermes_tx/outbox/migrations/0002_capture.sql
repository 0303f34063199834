-- hermes_tx outbox, version 2: capturing a table's changes.
--
-- hermes-tx capture attaches capture() to a table as an AFTER INSERT OR
-- UPDATE OR DELETE row trigger with the arguments (topic, table name,
-- primary key column, ...).  The table name is '' for a plain table (the
-- trigger's own table is named); a partitioned table passes its own name,
-- as the trigger fires on its partitions.  Each changed row becomes one
-- change, keyed by the primary key:
--   single column: the value as text (as ->> renders it from the row's JSON);
--   composite:     the JSON array of the values in key order, as text.
-- An UPDATE that changes the primary key is a DELETE of the old key and an
-- INSERT of the new one.
--
-- Per-key order without emit's advisory lock: the captured table's own row
-- locks and primary key already make writers of one row wait for each
-- other until commit, and a change's id is drawn after that wait.  (A lock
-- per key would fill the server's lock table on a bulk UPDATE.)

-- The key of a row of a table with a composite primary key (the single
-- column case is done inline, it is the common one).
CREATE FUNCTION {schema}.capture_key(r jsonb, columns text[], OUT key_text text, OUT key_json jsonb)
LANGUAGE sql
IMMUTABLE
AS $fn$
    SELECT (SELECT jsonb_agg(r -> u.c ORDER BY u.i) FROM unnest(columns) WITH ORDINALITY u (c, i))::text,
           (SELECT jsonb_object_agg(c, r -> c) FROM unnest(columns) c)
$fn$;

CREATE FUNCTION {schema}.capture()
RETURNS trigger
LANGUAGE plpgsql
AS $fn$
DECLARE
    topic text := TG_ARGV[0];
    old_row jsonb;
    new_row jsonb;
    old_text text;
    new_text text;
    old_key jsonb;
    new_key jsonb;
    tbl text;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        old_row := to_jsonb(OLD);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_row := to_jsonb(NEW);
    END IF;
    IF TG_NARGS = 3 THEN
        old_text := old_row ->> TG_ARGV[2];
        new_text := new_row ->> TG_ARGV[2];
    ELSE
        IF old_row IS NOT NULL THEN
            SELECT k.key_text, k.key_json INTO old_text, old_key
                FROM {schema}.capture_key(old_row, TG_ARGV[2:TG_NARGS - 1]) k;
        END IF;
        IF new_row IS NOT NULL THEN
            SELECT k.key_text, k.key_json INTO new_text, new_key
                FROM {schema}.capture_key(new_row, TG_ARGV[2:TG_NARGS - 1]) k;
        END IF;
    END IF;
    tbl := coalesce(nullif(TG_ARGV[1], ''), quote_ident(TG_TABLE_SCHEMA) || '.' || quote_ident(TG_TABLE_NAME));
    IF (old_row IS NOT NULL AND old_text IS NULL) OR (new_row IS NOT NULL AND new_text IS NULL) THEN
        RAISE EXCEPTION 'hermes capture: % has no primary key column(s) % any more; run hermes-tx capture again',
            tbl, array_to_string(TG_ARGV[2:TG_NARGS - 1], ', ')
            USING ERRCODE = 'undefined_column';
    END IF;
    IF TG_NARGS = 3 THEN
        old_key := jsonb_build_object(TG_ARGV[2], old_row -> TG_ARGV[2]);
        new_key := jsonb_build_object(TG_ARGV[2], new_row -> TG_ARGV[2]);
    END IF;
    IF TG_OP = 'UPDATE' AND old_text <> new_text THEN
        INSERT INTO {schema}.outbox (topic, key, payload) VALUES
            (topic, old_text, jsonb_build_object(
                'table', tbl, 'op', 'DELETE', 'key', old_key, 'old', old_row, 'new', NULL)),
            (topic, new_text, jsonb_build_object(
                'table', tbl, 'op', 'INSERT', 'key', new_key, 'old', NULL, 'new', new_row));
    ELSE
        INSERT INTO {schema}.outbox (topic, key, payload) VALUES
            (topic, CASE WHEN TG_OP = 'DELETE' THEN old_text ELSE new_text END, jsonb_build_object(
                'table', tbl, 'op', TG_OP, 'key', CASE WHEN TG_OP = 'DELETE' THEN old_key ELSE new_key END,
                'old', old_row, 'new', new_row));
    END IF;
    PERFORM pg_notify({channel_literal}, topic);
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION {schema}.capture() IS
    'hermes_tx: row trigger emitting one change per changed row; attach with hermes-tx capture';
