-- hermes_tx outbox, version 3: least privilege, and dead letters that
-- never go back in time.
--
-- Rights.  Every function of the schema runs with its owner's rights
-- (SECURITY DEFINER, search_path pinned to pg_catalog, pg_temp: every
-- object is named with its schema), and none is executable by PUBLIC.  A
-- role needs no right on the tables, only USAGE on the schema and EXECUTE
-- on the functions of its part (hermes_tx.outbox.privileges grants them):
--   writers:    emit; a captured table's writers need nothing (the
--               trigger writes the outbox with its owner's rights, and a
--               trigger's function is not checked when it fires);
--   consumers:  claim, ack, release, dead_letter, extend, unclaim, stats;
--   operators:  stats, retry_dead_letters, purge_dead_letters, emit,
--               capture (to attach it), SELECT on migrations and
--               dead_letters.
--
-- Dead letters.  A change that failed for good must not be delivered
-- after a newer change of its key was: a receiver applying changes in
-- order per key would end with older data than the database.  So:
--   - ack marks the older dead letters of each acknowledged change's key
--     as superseded (superseded_by = the delivered change's id).  Only
--     keys that may have dead letters look: dead_keys is a Bloom filter
--     of the keys of the dead letters, its bits set by the statement that
--     writes a dead letter (so an ack, which follows the claim, which
--     follows that commit, sees them), rebuilt by retries and purges;
--   - retry_dead_letters puts a dead letter back with its ORIGINAL id,
--     before the newer pending changes of its key (versioned receivers,
--     whose version is the id, ignore it when newer data is there), and
--     refuses a superseded one unless forced, and one whose key has a
--     newer change in flight.
-- Claims rely on "a key's newer rows only ever get larger ids"; a row put
-- back with an old id breaks that unless nothing that hands out or writes
-- a newer row of its key runs at the same time:
--   - writers: emit takes the key's advisory lock, capture takes it when
--     the key has a dead letter; a retry try-locks it (never waiting:
--     "busy" rather than a deadlock with an application's transaction);
--   - claims whose snapshot predates the retry: the key's newer pending
--     rows are deleted and inserted again, unchanged, by the retry, so a
--     claim locking the version it saw finds it gone (FOR UPDATE SKIP
--     LOCKED skips it);
--   - a retry locks rows with NOWAIT only, so it never waits for an ack
--     or a claim (which may wait for it).

-- Rights upgraded from version 2: roles that wrote the tables directly
-- keep working through the functions (version 2's functions were
-- executable by PUBLIC, this version's are not).
CREATE FUNCTION {schema}.upgrade_grants_v3(functions text[], privilege text, on_table text)
RETURNS void
LANGUAGE plpgsql
AS $fn$
DECLARE
    grantee text;
    fn text;
BEGIN
    FOR grantee IN
        SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END
        FROM pg_class c
        CROSS JOIN LATERAL aclexplode(c.relacl) a
        LEFT JOIN pg_roles r ON r.oid = a.grantee
        WHERE c.oid = format('%I.%I', {schema_literal}, on_table)::regclass
          AND a.privilege_type = privilege AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %s', {schema_literal}, grantee);
        FOREACH fn IN ARRAY functions LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %I.%I TO %s', {schema_literal}, fn, grantee);
        END LOOP;
    END LOOP;
END
$fn$;

-- the dead letters: which newer change of their key was delivered

ALTER TABLE {schema}.dead_letters ADD COLUMN superseded_by bigint;

COMMENT ON COLUMN {schema}.dead_letters.superseded_by IS
    'the id of a newer change of this key delivered after this one failed: retrying it would go back in time';

-- Finding a key's dead letters (ack, capture, retry).  The key is hashed:
-- a btree entry is limited to about 2,700 bytes, and a key is any text.
CREATE INDEX dead_letters_topic_key ON {schema}.dead_letters (topic, hashtextextended(key, 0));

-- The keys that have dead letters, as a Bloom filter of 65,536 bits (one
-- hash; 8 KB): an ack looks up only the keys whose bit is set.
CREATE TABLE {schema}.dead_keys (
    one    boolean PRIMARY KEY DEFAULT true CHECK (one),
    empty  boolean NOT NULL,  -- no bit set: no dead letter (the usual case)
    bits   bytea NOT NULL
);

-- Stored uncompressed: nothing to gain, and every ack reads it.
ALTER TABLE {schema}.dead_keys ALTER COLUMN bits SET STORAGE EXTERNAL;

INSERT INTO {schema}.dead_keys (empty, bits) VALUES (true, decode(repeat('00', 8192), 'hex'));

COMMENT ON TABLE {schema}.dead_keys IS
    'hermes_tx: a Bloom filter of the keys of the dead letters, so that acknowledgements look up only those';

-- The bit of a topic and key (inlined where it is used).
CREATE FUNCTION {schema}.dead_key_bit(topic text, key text)
RETURNS integer
LANGUAGE sql
IMMUTABLE
AS $fn$
    SELECT (hashtextextended(key, hashtextextended(topic, 0)) & 65535)::integer
$fn$;

-- bits with the bits at positions set.
CREATE FUNCTION {schema}.set_bits(bits bytea, positions integer[])
RETURNS bytea
LANGUAGE plpgsql
IMMUTABLE
AS $fn$
DECLARE
    p integer;
BEGIN
    FOREACH p IN ARRAY coalesce(positions, '{}') LOOP
        bits := set_bit(bits, p, 1);
    END LOOP;
    RETURN bits;
END
$fn$;

-- Rebuild the filter from the dead letters (a purge leaves bits of keys
-- that have none any more; so does a retry, which rebuilds it only once no
-- dead letter is left: a stale bit costs a look-up, nothing more).  The
-- filter's row is locked first: a statement writing dead letters that
-- commits before sets its bits in what is read next; one still running
-- sets them after, in this version.
CREATE FUNCTION {schema}.rebuild_dead_keys()
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM FROM {schema}.dead_keys FOR UPDATE;
    UPDATE {schema}.dead_keys SET empty = NOT EXISTS (SELECT FROM {schema}.dead_letters), bits = (
        SELECT decode(string_agg(lpad(to_hex(coalesce(b.byte, 0)), 2, '0'), '' ORDER BY i.n), 'hex')
        FROM generate_series(0, 8191) i (n)
        LEFT JOIN (
            SELECT p / 8 AS n, bit_or(1 << (p % 8)) AS byte
            FROM (SELECT DISTINCT {schema}.dead_key_bit(d.topic, d.key) AS p
                  FROM {schema}.dead_letters d) k
            GROUP BY p / 8
        ) b ON b.n = i.n);
END
$fn$;

-- emit and claim: unchanged, with their owner's rights (named without
-- their arguments: whatever they are, there is one of each)

ALTER FUNCTION {schema}.emit SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION {schema}.claim SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- capture: version 2's, with its owner's rights, taking emit's lock on a
-- key that has dead letters (see above)

CREATE OR REPLACE FUNCTION {schema}.capture()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    the_topic text := TG_ARGV[0];
    old_row jsonb;
    new_row jsonb;
    old_text text;
    new_text text;
    old_key jsonb;
    new_key jsonb;
    tbl text;
    k text;
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
            SELECT ck.key_text, ck.key_json INTO old_text, old_key
                FROM {schema}.capture_key(old_row, TG_ARGV[2:TG_NARGS - 1]) ck;
        END IF;
        IF new_row IS NOT NULL THEN
            SELECT ck.key_text, ck.key_json INTO new_text, new_key
                FROM {schema}.capture_key(new_row, TG_ARGV[2:TG_NARGS - 1]) ck;
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

-- The consumer's statements (hermes_tx.outbox.sql documents them), as
-- functions.  Each touches only rows that still hold the claim's token.

-- ack: delete the rows; the older dead letters of their keys are
-- superseded.  No dead letter at all (the usual case): no key to look up;
-- otherwise only those the filter holds.  (A dead letter that an
-- acknowledged change must supersede was written, and its bit set,
-- before that change was claimed, so before this looks.)
CREATE FUNCTION {schema}.ack(ids bigint[], token uuid)
RETURNS TABLE (id bigint)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    nothing_dead boolean;
    filter bytea;
BEGIN
    -- (the filter in memory once, not fetched from its TOAST table per test)
    SELECT k.empty, CASE WHEN NOT k.empty THEN k.bits || ''::bytea END
        INTO nothing_dead, filter FROM {schema}.dead_keys k;
    IF nothing_dead THEN
        RETURN QUERY
            DELETE FROM {schema}.outbox o
            WHERE o.id = ANY (ids) AND o.claim_token = token
            RETURNING o.id;
        RETURN;
    END IF;
    RETURN QUERY
        WITH gone AS (
            DELETE FROM {schema}.outbox o
            WHERE o.id = ANY (ids) AND o.claim_token = token
            RETURNING o.id, o.topic, o.key
        ), superseded AS (
            UPDATE {schema}.dead_letters d SET superseded_by = g.id
            FROM gone g
            WHERE get_bit(filter, {schema}.dead_key_bit(g.topic, g.key)) = 1
              AND d.topic = g.topic AND hashtextextended(d.key, 0) = hashtextextended(g.key, 0)
              AND d.key = g.key AND d.id < g.id
              AND (d.superseded_by IS NULL OR d.superseded_by < g.id)
        )
        SELECT g.id FROM gone g;
END
$fn$;

-- release: unclaim, available after the delay with last_error set; a row
-- delivered max_attempts times moves to the dead letters instead.
CREATE FUNCTION {schema}.release(
    ids bigint[], token uuid, delays double precision[], errors text[], max_attempts integer)
RETURNS TABLE (id bigint, outcome text)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN QUERY
        WITH given AS (
            SELECT g.id, coalesce(g.delay, 0) AS delay, g.error
            FROM unnest(ids, delays, errors) AS g (id, delay, error)
            WHERE g.id IS NOT NULL
        ), dead AS (
            DELETE FROM {schema}.outbox o USING given g
            WHERE o.id = g.id AND o.claim_token = token AND o.attempts >= max_attempts
            RETURNING o.id, o.topic, o.key, o.payload, o.created_at, o.attempts, g.error
        ), buried AS (
            INSERT INTO {schema}.dead_letters (id, topic, key, payload, created_at, attempts, last_error)
            SELECT * FROM dead
        ), marked AS (
            UPDATE {schema}.dead_keys k
            SET empty = false, bits = {schema}.set_bits(k.bits, ARRAY(
                SELECT {schema}.dead_key_bit(x.topic, x.key) FROM dead x))
            WHERE EXISTS (SELECT FROM dead)
        ), retried AS (
            UPDATE {schema}.outbox o
            SET claim_token = NULL, claimed_until = NULL, last_error = g.error,
                available_at = now() + make_interval(secs => g.delay)
            FROM given g
            WHERE o.id = g.id AND o.claim_token = token AND o.attempts < max_attempts
            RETURNING o.id
        )
        SELECT d.id, 'dead'::text FROM dead d
        UNION ALL
        SELECT r.id, 'retry'::text FROM retried r;
END
$fn$;

-- dead_letter: move rows to the dead letters now (a release after which
-- no attempt is left).
CREATE FUNCTION {schema}.dead_letter(ids bigint[], token uuid, errors text[])
RETURNS TABLE (id bigint)
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT r.id FROM {schema}.release(ids, token, NULL, errors, 0) r
$fn$;

-- extend: keep claims alive.
CREATE FUNCTION {schema}.extend(ids bigint[], token uuid, visibility double precision)
RETURNS TABLE (id bigint)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN QUERY
        UPDATE {schema}.outbox o
        SET claimed_until = now() + make_interval(secs => visibility)
        WHERE o.id = ANY (ids) AND o.claim_token = token
        RETURNING o.id;
END
$fn$;

-- unclaim: give back rows never handed to a processor, the delivery the
-- claim counted taken back.
CREATE FUNCTION {schema}.unclaim(ids bigint[], token uuid)
RETURNS TABLE (id bigint)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN QUERY
        UPDATE {schema}.outbox o
        SET claim_token = NULL, claimed_until = NULL, attempts = greatest(o.attempts - 1, 0)
        WHERE o.id = ANY (ids) AND o.claim_token = token
        RETURNING o.id;
END
$fn$;

-- stats: per topic, pending, in flight, the lag and dead letters.
CREATE FUNCTION {schema}.stats()
RETURNS TABLE (topic text, pending bigint, in_flight bigint, oldest_age double precision, dead_letters bigint)
LANGUAGE sql
STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH o AS (
        SELECT o.topic,
               count(*) FILTER (WHERE o.claimed_until IS NULL OR o.claimed_until < now()) AS pending,
               count(*) FILTER (WHERE o.claimed_until >= now()) AS in_flight,
               extract(epoch FROM now() - min(o.created_at))::double precision AS oldest_age
        FROM {schema}.outbox o GROUP BY o.topic
    ), d AS (
        SELECT d.topic, count(*) AS dead_letters FROM {schema}.dead_letters d GROUP BY d.topic
    )
    SELECT coalesce(o.topic, d.topic),
           coalesce(o.pending, 0)::bigint, coalesce(o.in_flight, 0)::bigint,
           o.oldest_age, coalesce(d.dead_letters, 0)::bigint
    FROM o FULL JOIN d ON o.topic = d.topic
    ORDER BY 1
$fn$;

-- retry_dead_letters: put dead letters back, each with its original id
-- (in id order), attempts 0, available now.  One row per id asked for:
--   retried      done;
--   superseded   newer = the id of the newer change of its key that was
--                delivered (only when not forced);
--   in flight    newer = the id of a newer change of its key being
--                delivered: retry once it is done;
--   busy         its key is being written or its rows are locked: try again;
--   missing      no dead letter with that id.
CREATE FUNCTION {schema}.retry_dead_letters(ids bigint[], force boolean)
RETURNS TABLE (id bigint, outcome text, newer bigint)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    wanted bigint;
    letter record;
    flying bigint;
BEGIN
    FOR wanted IN SELECT DISTINCT u.i FROM unnest(ids) u (i) WHERE u.i IS NOT NULL ORDER BY u.i LOOP
        id := wanted;
        newer := NULL;
        SELECT d.topic, d.key INTO letter FROM {schema}.dead_letters d WHERE d.id = wanted;
        IF NOT FOUND THEN
            outcome := 'missing';
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF NOT pg_try_advisory_xact_lock(
                hashtextextended(letter.key, hashtextextended(letter.topic, hashtextextended({schema_literal}, 0)))) THEN
            outcome := 'busy';
            RETURN NEXT;
            CONTINUE;
        END IF;
        BEGIN
            -- the key's rows first, then the dead letter: acks lock in that order
            SELECT min(o.id) FILTER (WHERE o.claim_token IS NOT NULL AND o.id > wanted) INTO flying
            FROM (SELECT x.id, x.claim_token FROM {schema}.outbox x
                  WHERE x.topic = letter.topic AND x.key = letter.key
                  FOR UPDATE NOWAIT) o;
            SELECT d.id, d.topic, d.key, d.payload, d.created_at, d.superseded_by INTO letter
            FROM {schema}.dead_letters d WHERE d.id = wanted FOR UPDATE NOWAIT;
            IF NOT FOUND THEN
                outcome := 'missing';
            ELSIF letter.superseded_by IS NOT NULL AND NOT force THEN
                outcome := 'superseded';
                newer := letter.superseded_by;
            ELSIF flying IS NOT NULL THEN
                outcome := 'in flight';
                newer := flying;
            ELSE
                -- newer pending rows of the key: new versions, so a claim
                -- that saw them before this commits finds them gone
                WITH moved AS (
                    DELETE FROM {schema}.outbox x
                    WHERE x.topic = letter.topic AND x.key = letter.key AND x.id > wanted
                    RETURNING x.*
                )
                INSERT INTO {schema}.outbox OVERRIDING SYSTEM VALUE SELECT * FROM moved;
                INSERT INTO {schema}.outbox (id, topic, key, payload, created_at)
                    OVERRIDING SYSTEM VALUE
                    VALUES (letter.id, letter.topic, letter.key, letter.payload, letter.created_at);
                DELETE FROM {schema}.dead_letters d WHERE d.id = wanted;
                PERFORM pg_notify({channel_literal}, letter.topic);
                outcome := 'retried';
            END IF;
        EXCEPTION WHEN lock_not_available THEN
            outcome := 'busy';
        END;
        RETURN NEXT;
    END LOOP;
    IF NOT EXISTS (SELECT FROM {schema}.dead_letters) THEN
        PERFORM {schema}.rebuild_dead_keys();
    END IF;
END
$fn$;

-- purge_dead_letters: delete dead letters for good (those of ids, all
-- when NULL, of topic, any when NULL); returns the ids deleted.
CREATE FUNCTION {schema}.purge_dead_letters(ids bigint[], the_topic text)
RETURNS TABLE (id bigint)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN QUERY
        DELETE FROM {schema}.dead_letters d
        WHERE (ids IS NULL OR d.id = ANY (ids)) AND (the_topic IS NULL OR d.topic = the_topic)
        RETURNING d.id;
    PERFORM {schema}.rebuild_dead_keys();
END
$fn$;

-- dead letters written before this version
SELECT {schema}.rebuild_dead_keys();

-- nothing is executable unless granted

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} FROM PUBLIC;

SELECT {schema}.upgrade_grants_v3('{emit}', 'INSERT', 'outbox');
SELECT {schema}.upgrade_grants_v3(
    '{claim, ack, release, dead_letter, extend, unclaim, stats}', 'UPDATE', 'outbox');
SELECT {schema}.upgrade_grants_v3(
    '{stats, retry_dead_letters, purge_dead_letters}', 'DELETE', 'dead_letters');
DROP FUNCTION {schema}.upgrade_grants_v3(text[], text, text);

COMMENT ON FUNCTION {schema}.retry_dead_letters(bigint[], boolean) IS
    'hermes_tx: put dead letters back with their original ids, unless a newer change of their key was delivered (force: anyway)';
