-- hermes_tx outbox, version 8: backfills (hermes-tx backfill).
--
-- A backfill emits one READ change per existing row of a table, in primary
-- key order, a chunk per transaction.  The command (hermes_tx.outbox.backfill)
-- reads each chunk with the operator's own rights (SELECT on the table:
-- nothing here reads a table for anyone) and locks its rows FOR SHARE, so
-- a concurrent UPDATE or DELETE of one of them commits after the chunk and
-- its change gets a later id; it hands the rows, rendered as capture
-- renders them, to backfill_chunk, which writes the changes and the
-- progress in the chunk's transaction: a crash loses at most the chunk in
-- flight, and the next run goes on after the last key recorded.
--
-- Progress, one row per table and topic.  last_key holds the text of
-- each key column (the type's own output, cast back by the command);
-- NULL before the first chunk.
CREATE TABLE {schema}.backfills (
    table_name    text COLLATE "C" NOT NULL,
    topic         text COLLATE "C" NOT NULL,
    key_columns   text[] NOT NULL,
    last_key      text[],
    rows_done     bigint NOT NULL DEFAULT 0,
    rows_estimate bigint,
    started_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    PRIMARY KEY (table_name, topic)
);

COMMENT ON TABLE {schema}.backfills IS
    'hermes_tx: the progress of each backfill (hermes-tx backfill), one row per table and topic';

-- backfill_start: begin a backfill of the_table into the_topic, or go on
-- with an unfinished one (same key columns, not restart).  Returns where
-- to go on from: the last key done (NULL: from the start), the rows done,
-- and whether it goes on.
CREATE FUNCTION {schema}.backfill_start(
    the_table text, the_topic text, key_columns text[], estimate bigint, restart boolean,
    OUT last_key text[], OUT rows_done bigint, OUT resumed boolean)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    found_row {schema}.backfills%ROWTYPE;
BEGIN
    SELECT * INTO found_row FROM {schema}.backfills b
        WHERE b.table_name = the_table AND b.topic = the_topic FOR UPDATE;
    IF FOUND AND NOT restart AND found_row.finished_at IS NULL
            AND found_row.key_columns = key_columns THEN
        UPDATE {schema}.backfills b SET rows_estimate = estimate, updated_at = now()
            WHERE b.table_name = the_table AND b.topic = the_topic;
        last_key := found_row.last_key;
        rows_done := found_row.rows_done;
        resumed := true;
        RETURN;
    END IF;
    INSERT INTO {schema}.backfills AS b (table_name, topic, key_columns, rows_estimate)
        VALUES (the_table, the_topic, key_columns, estimate)
        ON CONFLICT (table_name, topic) DO UPDATE
        SET key_columns = excluded.key_columns, last_key = NULL, rows_done = 0,
            rows_estimate = excluded.rows_estimate, started_at = now(), updated_at = now(),
            finished_at = NULL;
    last_key := NULL;
    rows_done := 0;
    resumed := false;
END
$fn$;

-- backfill_keys: the rows, numbered, with their keys as capture computes
-- them (one column: its text and {column: value}; several: capture_key).
CREATE FUNCTION {schema}.backfill_keys(rows jsonb[], key_columns text[])
RETURNS TABLE (n bigint, key_text text, key_json jsonb, r jsonb)
LANGUAGE sql
IMMUTABLE
AS $fn$
    SELECT u.n,
           CASE WHEN cardinality(key_columns) = 1 THEN u.r ->> key_columns[1] ELSE ck.key_text END,
           CASE WHEN cardinality(key_columns) = 1 THEN jsonb_build_object(key_columns[1], u.r -> key_columns[1])
                ELSE ck.key_json END,
           u.r
    FROM unnest(rows) WITH ORDINALITY u (r, n)
    CROSS JOIN LATERAL {schema}.capture_key(u.r, key_columns) ck
$fn$;

-- backfill_chunk: write one chunk's changes, in the order of rows (each
-- the row as capture renders it, key columns included), op READ, old
-- NULL, key as capture computes it; wake consumers; record the progress:
-- from_key must be the last key recorded (else another run moved it:
-- refused), to_key becomes it, finished marks the backfill done.  Keys
-- that have dead letters take emit's lock, as capture does: a retry of
-- one of them puts it back before the key's newer changes, and nothing
-- may write the key meanwhile.  Returns the changes written.
CREATE FUNCTION {schema}.backfill_chunk(
    the_table text, the_topic text, from_key text[], to_key text[], finished boolean, rows jsonb[])
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    progress {schema}.backfills%ROWTYPE;
    written bigint;
    col text;
BEGIN
    SELECT * INTO progress FROM {schema}.backfills b
        WHERE b.table_name = the_table AND b.topic = the_topic FOR UPDATE;
    IF NOT FOUND OR progress.finished_at IS NOT NULL
            OR progress.last_key IS DISTINCT FROM from_key THEN
        RAISE EXCEPTION 'hermes backfill: the progress of % into % moved (another backfill of it ran meanwhile)',
            the_table, the_topic USING ERRCODE = 'serialization_failure';
    END IF;
    IF NOT (SELECT k.empty FROM {schema}.dead_keys k) THEN
        PERFORM pg_advisory_xact_lock(
            hashtextextended(c.key_text, hashtextextended(the_topic, hashtextextended({schema_literal}, 0))))
        FROM (SELECT DISTINCT k.key_text FROM {schema}.backfill_keys(rows, progress.key_columns) k) c
        WHERE EXISTS (SELECT 1 FROM {schema}.dead_letters d
                      WHERE d.topic = the_topic AND hashtextextended(d.key, 0) = hashtextextended(c.key_text, 0)
                        AND d.key = c.key_text)
        ORDER BY c.key_text;
    END IF;
    -- In the rows' order (ids are drawn as unnest hands them out).  A key
    -- column missing from a row: the outbox's key NOT NULL refuses it.
    IF cardinality(progress.key_columns) = 1 THEN
        -- (the usual case, inlined: backfill_keys' capture_key per row
        -- cost more than the insert)
        col := progress.key_columns[1];
        INSERT INTO {schema}.outbox (topic, key, payload)
            SELECT the_topic, u.r ->> col, jsonb_build_object(
                       'table', the_table, 'op', 'READ', 'key', jsonb_build_object(col, u.r -> col),
                       'old', NULL, 'new', u.r)
            FROM unnest(rows) u (r);
    ELSE
        INSERT INTO {schema}.outbox (topic, key, payload)
            SELECT the_topic, k.key_text, jsonb_build_object(
                       'table', the_table, 'op', 'READ', 'key', k.key_json, 'old', NULL, 'new', k.r)
            FROM {schema}.backfill_keys(rows, progress.key_columns) k ORDER BY k.n;
    END IF;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written > 0 THEN
        PERFORM pg_notify({channel_literal}, the_topic);
    END IF;
    UPDATE {schema}.backfills b
        SET last_key = coalesce(to_key, b.last_key), rows_done = b.rows_done + written, updated_at = now(),
            finished_at = CASE WHEN finished THEN now() END
        WHERE b.table_name = the_table AND b.topic = the_topic;
    RETURN written;
END
$fn$;

REVOKE EXECUTE ON FUNCTION {schema}.backfill_keys(jsonb[], text[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION {schema}.backfill_start(text, text, text[], bigint, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION {schema}.backfill_chunk(text, text, text[], text[], boolean, jsonb[]) FROM PUBLIC;

-- Whoever operates (hermes-tx grants --operator: may capture) may backfill
-- and read the progress.
DO $do$
DECLARE
    grantee text;
BEGIN
    FOR grantee IN
        SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END
        FROM pg_proc p
        CROSS JOIN LATERAL aclexplode(p.proacl) a
        LEFT JOIN pg_roles r ON r.oid = a.grantee
        WHERE p.oid = format('%I.retry_dead_letters(bigint[], boolean)', {schema_literal})::regprocedure
          AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %I.backfill_start, %I.backfill_chunk TO %s',
                       {schema_literal}, {schema_literal}, grantee);
        EXECUTE format('GRANT SELECT ON TABLE %I.backfills TO %s', {schema_literal}, grantee);
    END LOOP;
END
$do$;

COMMENT ON FUNCTION {schema}.backfill_chunk(text, text, text[], text[], boolean, jsonb[]) IS
    'hermes_tx: write one chunk of a backfill (READ changes) and record its progress';
