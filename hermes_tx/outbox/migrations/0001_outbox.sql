-- hermes_tx outbox, version 1: the outbox, its dead letters, emit and claim.
--
-- Rendered by hermes_tx.outbox.schema: {schema} is the quoted schema name,
-- {schema_literal} its name as an SQL string literal, {channel_literal} the
-- wake-up channel (hermes_tx.outbox.names.channel) as a literal.

CREATE TABLE {schema}.outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic         text COLLATE "C" NOT NULL,
    key           text COLLATE "C" NOT NULL,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    available_at  timestamptz NOT NULL DEFAULT now(),
    attempts      integer NOT NULL DEFAULT 0,
    claim_token   uuid,
    claimed_until timestamptz,
    last_error    text
) WITH (
    -- claims, releases and extensions update unindexed columns: room on
    -- the page keeps them HOT updates.
    fillfactor = 40,
    -- a queue: rows come and go, vacuum early and at full speed.
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 500,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 500,
    autovacuum_vacuum_cost_delay = 0
);

COMMENT ON TABLE {schema}.outbox IS
    'hermes_tx durable outbox: write with emit(topic, key, payload); rows are deleted when acknowledged';

-- The claim's per-key check ("no earlier row of this topic and key") and
-- its walk over the keys of a topic.
CREATE INDEX outbox_topic_key_id ON {schema}.outbox (topic, key, id);
-- Oldest rows of a topic first.
CREATE INDEX outbox_topic_id ON {schema}.outbox (topic, id);

CREATE TABLE {schema}.dead_letters (
    id          bigint PRIMARY KEY,
    topic       text COLLATE "C" NOT NULL,
    key         text COLLATE "C" NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL,
    attempts    integer NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now(),
    last_error  text
);

CREATE INDEX dead_letters_topic_id ON {schema}.dead_letters (topic, id);

COMMENT ON TABLE {schema}.dead_letters IS
    'hermes_tx outbox changes that failed for good; hermes-tx dead-letters retries or purges them';

-- emit: how applications write changes (captured tables write their own,
-- see version 2).  Writers of one (topic, key)
-- are serialized by a transaction-level advisory lock taken before the id
-- is drawn, so per key, id order is commit order.  One NOTIFY per topic
-- per transaction: PostgreSQL folds identical (channel, payload) pairs.
CREATE FUNCTION {schema}.emit(topic text, key text, payload jsonb)
RETURNS bigint
LANGUAGE plpgsql
AS $fn$
#variable_conflict use_variable
DECLARE
    new_id bigint;
BEGIN
    IF topic IS NULL OR key IS NULL OR payload IS NULL THEN
        RAISE EXCEPTION 'hermes emit: topic, key and payload must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF octet_length(topic) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'hermes emit: a topic is 1 to 255 bytes, not %', octet_length(topic)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(
        hashtextextended(key, hashtextextended(topic, hashtextextended({schema_literal}, 0))));
    INSERT INTO {schema}.outbox (topic, key, payload)
        VALUES (topic, key, payload)
        RETURNING id INTO new_id;
    PERFORM pg_notify({channel_literal}, topic);
    RETURN new_id;
END
$fn$;

COMMENT ON FUNCTION {schema}.emit(text, text, jsonb) IS
    'hermes_tx: write a change to the outbox in the current transaction; returns its id';

-- What a claim returns per row: attempts is how many times the row was
-- handed out before, created_at is in seconds since the epoch, payload is
-- the JSON text.
CREATE TYPE {schema}.claimed AS (
    id bigint, topic text, key text, attempts integer,
    created_at double precision, payload text
);

-- Claiming is in two steps within the claim's one statement: pick (find
-- rows and lock them FOR UPDATE SKIP LOCKED, returning their ctids: a
-- locked row stays where it is), then one UPDATE of the picked rows.

-- pick_heads: lock up to max_rows of the candidate ids that are claimable
-- now (available, not claimed or claim expired), oldest first, leaving out
-- rows already picked.  Every candidate must be the oldest row of its
-- (topic, key): a key's newer rows only ever get larger ids, so a head
-- stays a head until it is gone.
CREATE FUNCTION {schema}.pick_heads(candidates bigint[], max_rows integer, picked tid[])
RETURNS tid[]
LANGUAGE sql
AS $fn$
    SELECT ARRAY(
        SELECT o.ctid FROM {schema}.outbox o
        WHERE o.id = ANY (candidates)
          AND o.available_at <= now()
          AND (o.claimed_until IS NULL OR o.claimed_until < now())
          AND o.ctid <> ALL (picked)
        ORDER BY o.id
        LIMIT max_rows
        FOR UPDATE SKIP LOCKED)
$fn$;

-- pick_oldest: lock up to max_rows of the oldest claimable rows of a topic
-- with ids up to last_id that are the oldest rows of their keys.
CREATE FUNCTION {schema}.pick_oldest(the_topic text, last_id bigint, max_rows integer)
RETURNS tid[]
LANGUAGE sql
AS $fn$
    SELECT ARRAY(
        SELECT o.ctid FROM {schema}.outbox o
        WHERE o.topic = the_topic AND o.id <= last_id
          AND o.available_at <= now()
          AND (o.claimed_until IS NULL OR o.claimed_until < now())
          AND NOT EXISTS (
              SELECT 1 FROM {schema}.outbox e
              WHERE e.topic = the_topic AND e.key = o.key AND e.id < o.id)
        ORDER BY o.id
        LIMIT max_rows
        FOR UPDATE SKIP LOCKED)
$fn$;

-- key_heads: the oldest row of each key of a topic, at most max_keys of
-- them (in key order; NULL: all), found by skipping through the
-- (topic, key, id) index: one probe per key, however many rows each has.
CREATE FUNCTION {schema}.key_heads(the_topic text, max_keys bigint)
RETURNS bigint[]
LANGUAGE sql
AS $fn$
    WITH RECURSIVE heads (key, id) AS (
        (SELECT o.key, o.id FROM {schema}.outbox o
         WHERE o.topic = the_topic
         ORDER BY o.key, o.id LIMIT 1)
        UNION ALL
        SELECT n.key, n.id
        FROM heads h
        CROSS JOIN LATERAL (
            SELECT o.key, o.id FROM {schema}.outbox o
            WHERE o.topic = the_topic AND o.key > h.key
            ORDER BY o.key, o.id LIMIT 1) n
    )
    SELECT ARRAY(SELECT id FROM heads LIMIT max_keys)
$fn$;

-- pick_topic: lock up to max_rows claimable rows of one topic, finding the
-- heads of its keys cheaply whatever the shape of its backlog:
--   1. a few keys only: walk all their heads (one index probe per key);
--   2. many keys: the oldest rows are mostly heads: pick among a window of
--      the oldest rows not in flight nor waiting for a retry;
--   3. the window was full yet too few rows were claimable (the heads of
--      the oldest rows are in flight or waiting for a retry): walk the
--      heads of every key.
CREATE FUNCTION {schema}.pick_topic(the_topic text, max_rows integer)
RETURNS tid[]
LANGUAGE plpgsql
AS $fn$
DECLARE
    few_keys constant integer := 32;
    heads bigint[];
    last_id bigint;
    picked tid[];
BEGIN
    heads := {schema}.key_heads(the_topic, few_keys + 1);
    IF cardinality(heads) <= few_keys THEN
        RETURN {schema}.pick_heads(heads, max_rows, '{}');
    END IF;
    -- the window: the oldest rows that are neither in flight nor waiting
    SELECT o.id INTO last_id FROM {schema}.outbox o
        WHERE o.topic = the_topic
          AND o.available_at <= now()
          AND (o.claimed_until IS NULL OR o.claimed_until < now())
        ORDER BY o.id OFFSET 2 * max_rows + 100 LIMIT 1;
    picked := {schema}.pick_oldest(the_topic, coalesce(last_id, 9223372036854775807), max_rows);
    IF cardinality(picked) < max_rows AND last_id IS NOT NULL THEN
        picked := picked || {schema}.pick_heads(
            {schema}.key_heads(the_topic, NULL), max_rows - cardinality(picked), picked);
    END IF;
    RETURN picked;
END
$fn$;

-- claim: hand out up to max_rows changes of the given topics, never a row
-- while an older row of its topic and key is still in the outbox (pending,
-- in flight or waiting for a retry).  Each topic gets an equal share of
-- max_rows; what some topics leave is shared by the others.  Rows come in
-- id order within each topic.
CREATE FUNCTION {schema}.claim(
    topics text[], max_rows integer, token uuid, visibility double precision)
RETURNS SETOF {schema}.claimed
LANGUAGE plpgsql
AS $fn$
DECLARE
    until timestamptz := now() + make_interval(secs => visibility);
    wanted text[];
    hungry text[];
    remaining integer := max_rows;
    share integer;
    picked tid[];
    t text;
BEGIN
    IF token IS NULL OR visibility IS NULL OR visibility <= 0 THEN
        RAISE EXCEPTION 'hermes claim: a token and a positive visibility are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    wanted := ARRAY(SELECT u.t FROM unnest(topics) WITH ORDINALITY u (t, n)
                    WHERE u.t IS NOT NULL GROUP BY u.t ORDER BY min(u.n));
    WHILE remaining > 0 AND cardinality(wanted) > 0 LOOP
        -- each topic's share of what is left; topics that fill theirs
        -- share what the others left in the next round
        share := ceil(remaining::numeric / cardinality(wanted));
        hungry := '{}';
        FOREACH t IN ARRAY wanted LOOP
            EXIT WHEN remaining <= 0;
            picked := {schema}.pick_topic(t, least(share, remaining));
            RETURN QUERY
                WITH claimed AS (
                    UPDATE {schema}.outbox o
                    SET claim_token = token, claimed_until = until, attempts = o.attempts + 1
                    WHERE o.ctid = ANY (picked)
                    RETURNING o.id, o.topic, o.key, o.attempts - 1,
                              extract(epoch FROM o.created_at)::double precision, o.payload::text)
                SELECT * FROM claimed ORDER BY 1;
            remaining := remaining - cardinality(picked);
            IF cardinality(picked) = share THEN
                hungry := hungry || t;
            END IF;
        END LOOP;
        wanted := hungry;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION {schema}.claim(text[], integer, uuid, double precision) IS
    'hermes_tx: claim up to max_rows changes of these topics for token, oldest first, one per key at a time';
