-- hermes_tx outbox, version 7: choosing the columns that leave.
--
-- hermes-tx capture --columns a,b / --exclude-columns x,y attaches
-- capture() with the arguments of version 2 followed by a selection:
--   (topic, table name, key column, ..., '', 'only', column, ...)
--   (topic, table name, key column, ..., '', 'except', column, ...)
-- '' cannot be a column's name, so it ends the key's columns; without it
-- (no selection: every column leaves) the arguments are version 2's, and
-- triggers attached by earlier versions keep working unchanged.
--   only:   the row keeps only the columns listed (hermes-tx capture lists
--           the key's columns first: they always leave); a column added to
--           the table later does not leave;
--   except: the row loses the columns listed (never a key column); a column
--           added later leaves.
-- Applied to old and new alike; the key is taken from the whole row.
-- hermes_tx.outbox.capture.row_json renders a row the same way (backfill).
CREATE OR REPLACE FUNCTION {schema}.capture()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    the_topic text := TG_ARGV[0];
    ends integer := array_position(TG_ARGV, '', 2);
    key_columns text[];
    mode text;
    chosen text[];
    old_row jsonb;
    new_row jsonb;
    old_kept jsonb;
    new_kept jsonb;
    old_text text;
    new_text text;
    old_key jsonb;
    new_key jsonb;
    tbl text;
    k text;
BEGIN
    IF ends IS NULL THEN
        key_columns := TG_ARGV[2:TG_NARGS - 1];
    ELSE
        key_columns := TG_ARGV[2:ends - 1];
        mode := TG_ARGV[ends + 1];
        chosen := coalesce(TG_ARGV[ends + 2:TG_NARGS - 1], '{}');
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_row := to_jsonb(OLD);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_row := to_jsonb(NEW);
    END IF;
    IF cardinality(key_columns) = 1 THEN
        old_text := old_row ->> key_columns[1];
        new_text := new_row ->> key_columns[1];
    ELSE
        IF old_row IS NOT NULL THEN
            SELECT ck.key_text, ck.key_json INTO old_text, old_key
                FROM {schema}.capture_key(old_row, key_columns) ck;
        END IF;
        IF new_row IS NOT NULL THEN
            SELECT ck.key_text, ck.key_json INTO new_text, new_key
                FROM {schema}.capture_key(new_row, key_columns) ck;
        END IF;
    END IF;
    tbl := coalesce(nullif(TG_ARGV[1], ''), quote_ident(TG_TABLE_SCHEMA) || '.' || quote_ident(TG_TABLE_NAME));
    IF (old_row IS NOT NULL AND old_text IS NULL) OR (new_row IS NOT NULL AND new_text IS NULL) THEN
        RAISE EXCEPTION 'hermes capture: % has no primary key column(s) % any more; run hermes-tx capture again',
            tbl, array_to_string(key_columns, ', ')
            USING ERRCODE = 'undefined_column';
    END IF;
    IF cardinality(key_columns) = 1 THEN
        old_key := jsonb_build_object(key_columns[1], old_row -> key_columns[1]);
        new_key := jsonb_build_object(key_columns[1], new_row -> key_columns[1]);
    END IF;
    IF mode = 'except' THEN
        old_row := old_row - chosen;
        new_row := new_row - chosen;
    ELSIF mode = 'only' THEN
        -- (a loop of plain expressions: no query per row, about twice as
        -- fast as aggregating jsonb_each for a few columns)
        old_kept := CASE WHEN old_row IS NOT NULL THEN '{}'::jsonb END;
        new_kept := CASE WHEN new_row IS NOT NULL THEN '{}'::jsonb END;
        FOREACH k IN ARRAY chosen LOOP
            IF old_row ? k THEN
                old_kept := old_kept || jsonb_build_object(k, old_row -> k);
            END IF;
            IF new_row ? k THEN
                new_kept := new_kept || jsonb_build_object(k, new_row -> k);
            END IF;
        END LOOP;
        old_row := old_kept;
        new_row := new_kept;
    ELSIF mode IS NOT NULL THEN
        RAISE EXCEPTION 'hermes capture: unknown column selection % on %; run hermes-tx capture again', mode, tbl
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- a retry of one of the key's dead letters may be under way: wait for it
    FOREACH k IN ARRAY CASE WHEN TG_OP = 'DELETE' THEN ARRAY[old_text]
                            WHEN TG_OP = 'UPDATE' AND old_text <> new_text THEN ARRAY[old_text, new_text]
                            ELSE ARRAY[new_text] END LOOP
        IF EXISTS (SELECT 1 FROM {schema}.dead_letters d
                   WHERE d.topic = the_topic AND hashtextextended(d.key, 0) = hashtextextended(k, 0)
                     AND d.key = k) THEN
            PERFORM pg_advisory_xact_lock(
                hashtextextended(k, hashtextextended(the_topic, hashtextextended({schema_literal}, 0))));
        END IF;
    END LOOP;
    IF TG_OP = 'UPDATE' AND old_text <> new_text THEN
        INSERT INTO {schema}.outbox (topic, key, payload) VALUES
            (the_topic, old_text, jsonb_build_object(
                'table', tbl, 'op', 'DELETE', 'key', old_key, 'old', old_row, 'new', NULL)),
            (the_topic, new_text, jsonb_build_object(
                'table', tbl, 'op', 'INSERT', 'key', new_key, 'old', NULL, 'new', new_row));
    ELSE
        INSERT INTO {schema}.outbox (topic, key, payload) VALUES
            (the_topic, CASE WHEN TG_OP = 'DELETE' THEN old_text ELSE new_text END, jsonb_build_object(
                'table', tbl, 'op', TG_OP, 'key', CASE WHEN TG_OP = 'DELETE' THEN old_key ELSE new_key END,
                'old', old_row, 'new', new_row));
    END IF;
    PERFORM pg_notify({channel_literal}, the_topic);
    RETURN NULL;
END
$fn$;

-- (CREATE OR REPLACE keeps the function's owner and grants: operators may
-- execute it, to attach it; PUBLIC may not)

COMMENT ON FUNCTION {schema}.capture() IS
    'hermes_tx: row trigger emitting one change per changed row, only the columns chosen; attach with hermes-tx capture';
