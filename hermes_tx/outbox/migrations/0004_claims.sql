-- hermes_tx outbox, version 4: claims that stay cheap whatever the backlog
-- holds, keys of any length, and a dead consumer's claims taken over at once.
--
-- Upgrading a populated outbox: the table is locked (ACCESS EXCLUSIVE,
-- held until the install commits: writers, emit, captured tables and
-- consumers wait) while three indexes are built; docs/outbox.rst gives the
-- measured time per million rows.

-- Who holds a claim: the claiming backend's pid and the claim's
-- transaction time.  A claim whose backend is gone (no backend with that
-- pid started before the claim) is taken over at once, not after its
-- visibility timeout.  Claims update only unindexed columns: HOT updates.
ALTER TABLE {schema}.outbox
    ADD COLUMN claim_pid integer,
    ADD COLUMN claimed_at timestamptz;

-- Keys of any length: indexes hold a 64-bit hash of the key, the key itself
-- is compared on equality (a btree entry holding the key failed past about
-- 2,700 bytes).
DROP INDEX {schema}.outbox_topic_key_id;
CREATE INDEX outbox_topic_key_hash_id ON {schema}.outbox (topic, hashtextextended(key, 0), id);

-- The rows of a topic in two disjoint partial indexes, so that a claim
-- never walks rows that cannot be claimed before some time in the future:
--   fresh: never released nor deferred (available_at = created_at), oldest
--          first;
--   later: released for a retry, or deferred behind their key's head while
--          it waits for one, by the time they become available.
DROP INDEX {schema}.outbox_topic_id;
CREATE INDEX outbox_topic_fresh_id ON {schema}.outbox (topic, id)
    WHERE available_at <= created_at;
CREATE INDEX outbox_topic_later ON {schema}.outbox (topic, available_at, id)
    WHERE available_at > created_at;

DROP FUNCTION {schema}.pick_topic(text, integer);
DROP FUNCTION {schema}.pick_oldest(text, bigint, integer);
DROP FUNCTION {schema}.pick_heads(bigint[], integer, tid[]);
DROP FUNCTION {schema}.key_heads(text, bigint);

-- claim_free: may a row be claimed as far as its claim goes: never
-- claimed (or given back), its claim expired, or the backend that claimed
-- it is gone: no backend of the list (pids, and their start times where
-- visible: NULL for other roles' backends) read just after the time seen
-- has that pid and started before the claim.  A claim made after seen may
-- come from a backend not on the list: it is kept.  A backend whose start
-- time is hidden counts as the claimer: if its pid was reused, the claim
-- waits for its visibility timeout.  Claims from before version 4 have no
-- pid: they wait for it too.
CREATE FUNCTION {schema}.claim_free(
    claimed_until timestamptz, pid integer, claimed_at timestamptz,
    pids integer[], starts timestamptz[], seen timestamptz)
RETURNS boolean
LANGUAGE sql
STABLE
AS $fn$
    SELECT claimed_until IS NULL OR claimed_until < now()
        OR coalesce(claimed_at < seen
                    AND NOT coalesce(starts[array_position(pids, pid)] <= claimed_at,
                                     array_position(pids, pid) IS NOT NULL),
                    false)
$fn$;

-- walk_keys: the oldest row of each key of a topic with a hash from
-- from_hash to to_hash (a key is known by its hash: when two keys share
-- one, the oldest row of the pair), at most max_keys of them, in hash
-- order: one index probe per key, however many rows each has.  Returns
-- their (ctid, id).
CREATE FUNCTION {schema}.walk_keys(
    the_topic text, from_hash bigint, to_hash bigint, max_keys integer,
    OUT tids tid[], OUT ids bigint[])
LANGUAGE plpgsql
AS $fn$
BEGIN
    WITH RECURSIVE heads (h, id, tid) AS (
        (SELECT hashtextextended(o.key, 0), o.id, o.ctid FROM {schema}.outbox o
         WHERE o.topic = the_topic
           AND hashtextextended(o.key, 0) >= from_hash AND hashtextextended(o.key, 0) <= to_hash
         ORDER BY hashtextextended(o.key, 0), o.id LIMIT 1)
        UNION ALL
        SELECT n.h, n.id, n.tid
        FROM heads p
        CROSS JOIN LATERAL (
            SELECT hashtextextended(o.key, 0) AS h, o.id, o.ctid AS tid FROM {schema}.outbox o
            WHERE o.topic = the_topic
              AND hashtextextended(o.key, 0) > p.h AND hashtextextended(o.key, 0) <= to_hash
            ORDER BY hashtextextended(o.key, 0), o.id LIMIT 1) n
    )
    SELECT coalesce(array_agg(w.tid), '{}'), coalesce(array_agg(w.id), '{}') INTO tids, ids
        FROM (SELECT heads.tid, heads.id FROM heads LIMIT max_keys) w;
END
$fn$;

-- lock_heads: lock up to max_rows of the candidates (rows of the_topic,
-- given as the versions an earlier statement saw: their ctids and ids)
-- that are claimable now (available, and free as far as their claim
-- goes), oldest first, leaving out rows already picked.  With probe, only those
-- that are the oldest row of their key (one index probe each); without,
-- the caller knows they are.  A candidate changed since it was seen (for
-- one, deleted and inserted again by a dead letter's retry, which puts an
-- older row before it) is no longer that version: it is not locked.
CREATE FUNCTION {schema}.lock_heads(
    the_topic text, tids tid[], ids bigint[], max_rows integer, picked tid[], probe boolean,
    pids integer[], starts timestamptz[], seen timestamptz)
RETURNS tid[]
LANGUAGE plpgsql
AS $fn$
BEGIN
    RETURN ARRAY(
        SELECT o.ctid
        FROM (SELECT u.tid, u.id FROM unnest(tids, ids) u (tid, id) ORDER BY u.id OFFSET 0) c
        JOIN {schema}.outbox o ON o.ctid = c.tid AND o.id = c.id
        WHERE o.available_at <= now()
          AND {schema}.claim_free(o.claimed_until, o.claim_pid, o.claimed_at, pids, starts, seen)
          AND o.ctid <> ALL (picked)
          AND (NOT probe OR o.id = (
              SELECT e.id FROM {schema}.outbox e
              WHERE e.topic = the_topic
                AND hashtextextended(e.key, 0) >= hashtextextended(o.key, 0)
                AND hashtextextended(e.key, 0) <= hashtextextended(o.key, 0) AND e.key = o.key
              ORDER BY hashtextextended(e.key, 0), e.id LIMIT 1))
        ORDER BY c.id
        LIMIT max_rows
        FOR UPDATE OF o SKIP LOCKED);
END
$fn$;

-- claim_window: the window of a claim (see pick_topic): the first
-- window_rows free rows (see claim_free) of the rows back from a retry or
-- a deferral, by the time they came back, and the first window_rows free
-- fresh rows, oldest first; each with the rows in flight among them
-- (scan_rows rows at most of each).  Returns its candidates, the oldest
-- row of each key in it if free (their ctids and ids, in no order);
-- whether it was full (more rows may follow); whether it is exact: it
-- holds every row back from a retry and no row of the topic waits, so
-- every row older than a candidate is in it and candidates are heads.
-- Each statement reads an index in its order, a few rows at a time, and
-- its plan cannot read another way whatever the statistics say: ranges
-- stop each scan, and the topic is compared as a range (>= and <=) where
-- rows are read in id order, since the primary key gives that order too.
-- On PostgreSQL 15 and later a running count of free rows stops each scan
-- (a run condition); before, a first pass finds the window's last row.
-- hermes.claim_window = 'bounds' (a setting) picks the second way anyway.
CREATE FUNCTION {schema}.claim_window(
    the_topic text, window_rows integer, scan_rows integer,
    pids integer[], starts timestamptz[], seen timestamptz,
    OUT tids tid[], OUT ids bigint[], OUT window_full boolean, OUT exact boolean)
LANGUAGE plpgsql
AS $fn$
DECLARE
    highest constant bigint := 9223372036854775807;
    later_at timestamptz;
    later_id bigint;
    fresh_id bigint;
    later_free bigint;
    later_rows bigint;
    fresh_free bigint;
    fresh_rows bigint;
BEGIN
    IF current_setting('server_version_num')::integer >= 150000
       AND coalesce(current_setting('hermes.claim_window', true), '') <> 'bounds' THEN
        WITH win AS (
            (SELECT 'l' AS part, l.id, l.tid, l.h, l.free, l.n FROM (
                SELECT o.id, o.ctid AS tid, hashtextextended(o.key, 0) AS h, f.free,
                       count(*) FILTER (WHERE f.free)
                           OVER (ORDER BY o.topic, o.available_at, o.id ROWS UNBOUNDED PRECEDING) AS n
                FROM {schema}.outbox o
                CROSS JOIN LATERAL (SELECT {schema}.claim_free(
                    o.claimed_until, o.claim_pid, o.claimed_at, pids, starts, seen) AS free) f
                WHERE o.topic = the_topic AND o.available_at > o.created_at AND o.available_at <= now()) l
             WHERE l.n <= window_rows
             LIMIT scan_rows)
            UNION ALL
            (SELECT 'f', r.id, r.tid, r.h, r.free, r.n FROM (
                SELECT o.id, o.ctid AS tid, hashtextextended(o.key, 0) AS h, f.free,
                       count(*) FILTER (WHERE f.free)
                           OVER (ORDER BY o.topic, o.id ROWS UNBOUNDED PRECEDING) AS n
                FROM {schema}.outbox o
                CROSS JOIN LATERAL (SELECT {schema}.claim_free(
                    o.claimed_until, o.claim_pid, o.claimed_at, pids, starts, seen) AS free) f
                WHERE o.topic >= the_topic AND o.topic <= the_topic AND o.available_at <= o.created_at) r
             WHERE r.n <= window_rows
             LIMIT scan_rows)
        )
        SELECT coalesce(array_agg(w.tid) FILTER (WHERE w.first AND w.free), '{}'),
               coalesce(array_agg(w.id) FILTER (WHERE w.first AND w.free), '{}'),
               coalesce(max(w.n) FILTER (WHERE w.part = 'l'), 0), count(*) FILTER (WHERE w.part = 'l'),
               coalesce(max(w.n) FILTER (WHERE w.part = 'f'), 0), count(*) FILTER (WHERE w.part = 'f')
            INTO tids, ids, later_free, later_rows, fresh_free, fresh_rows
            FROM (SELECT w.*, row_number() OVER (PARTITION BY w.h ORDER BY w.id) = 1 AS first FROM win w) w;
    ELSE
        SELECT o.available_at, o.id INTO later_at, later_id FROM {schema}.outbox o
            WHERE o.topic = the_topic AND o.available_at > o.created_at AND o.available_at <= now()
              AND {schema}.claim_free(o.claimed_until, o.claim_pid, o.claimed_at, pids, starts, seen)
            ORDER BY o.topic, o.available_at, o.id OFFSET window_rows - 1 LIMIT 1;
        SELECT o.id INTO fresh_id FROM {schema}.outbox o
            WHERE o.topic >= the_topic AND o.topic <= the_topic AND o.available_at <= o.created_at
              AND {schema}.claim_free(o.claimed_until, o.claim_pid, o.claimed_at, pids, starts, seen)
            ORDER BY o.topic, o.id OFFSET window_rows - 1 LIMIT 1;
        WITH win AS (
            (SELECT 'l' AS part, o.id, o.ctid AS tid, hashtextextended(o.key, 0) AS h,
                    {schema}.claim_free(o.claimed_until, o.claim_pid, o.claimed_at, pids, starts, seen) AS free
             FROM {schema}.outbox o
             WHERE o.topic = the_topic AND o.available_at > o.created_at AND o.available_at <= now()
               AND (o.available_at, o.id) <= (coalesce(later_at, 'infinity'), coalesce(later_id, highest))
             ORDER BY o.topic, o.available_at, o.id LIMIT scan_rows)
            UNION ALL
            (SELECT 'f', o.id, o.ctid, hashtextextended(o.key, 0),
                    {schema}.claim_free(o.claimed_until, o.claim_pid, o.claimed_at, pids, starts, seen)
             FROM {schema}.outbox o
             WHERE o.topic >= the_topic AND o.topic <= the_topic AND o.available_at <= o.created_at
               AND o.id <= coalesce(fresh_id, highest)
             ORDER BY o.topic, o.id LIMIT scan_rows)
        )
        SELECT coalesce(array_agg(w.tid) FILTER (WHERE w.first AND w.free), '{}'),
               coalesce(array_agg(w.id) FILTER (WHERE w.first AND w.free), '{}'),
               count(*) FILTER (WHERE w.part = 'l' AND w.free), count(*) FILTER (WHERE w.part = 'l'),
               count(*) FILTER (WHERE w.part = 'f' AND w.free), count(*) FILTER (WHERE w.part = 'f')
            INTO tids, ids, later_free, later_rows, fresh_free, fresh_rows
            FROM (SELECT w.*, row_number() OVER (PARTITION BY w.h ORDER BY w.id) = 1 AS first FROM win w) w;
    END IF;
    window_full := later_free >= window_rows OR fresh_free >= window_rows
        OR later_rows >= scan_rows OR fresh_rows >= scan_rows;
    -- every row back from a retry is in the window, and no row of the topic waits
    exact := later_free < window_rows AND later_rows < scan_rows AND coalesce((
        SELECT o.available_at <= now() FROM {schema}.outbox o
        WHERE o.topic = the_topic AND o.available_at > o.created_at
        ORDER BY o.topic DESC, o.available_at DESC LIMIT 1), true);
END
$fn$;

-- pick_topic: lock up to max_rows claimable rows of one topic, finding the
-- heads of its keys cheaply whatever the shape of its backlog:
--   1. the candidates of the window (claim_window) that are heads: all of
--      them when the window is exact, else those that are the oldest row
--      of their key in the whole outbox (one probe each);
--   2. too few, and the window was not exact (some rows wait): up to
--      max_rows rows behind candidates whose key's head waits are deferred
--      to that time (they cannot go before it), which takes them out of
--      later windows;
--   3. still too few, nothing deferred, and the window was full yet held
--      fewer than max_rows candidates (its rows belong to keys whose heads
--      are in flight; candidates merely locked by another claim do not
--      count): walk window_rows keys from a random point (every key,
--      oldest first, when there are no more), one index probe per key;
--      what it finds are heads.  Keys past the window get their turn
--      whatever holds the oldest rows.
-- The window is max_rows + 100 free rows: a claim that meets another
-- claim's locked rows at the same time gets what is left (at least 100).
-- So a row that waits is in no window, nor for long the rows behind it,
-- and the rows of a key whose head is in flight are passed over as part of
-- their key, with no probe.
CREATE FUNCTION {schema}.pick_topic(
    the_topic text, max_rows integer, pids integer[], starts timestamptz[], seen timestamptz)
RETURNS tid[]
LANGUAGE plpgsql
AS $fn$
DECLARE
    window_rows constant integer := max_rows + 100;
    -- rows read for one window at most, in flight or not
    scan_rows constant integer := 10 * window_rows;
    lowest constant bigint := -9223372036854775808;
    highest constant bigint := 9223372036854775807;
    tids tid[];
    ids bigint[];
    more_tids tid[];
    more_ids bigint[];
    picked tid[];
    window_full boolean;
    exact boolean;
    behind tid[] := '{}';
    behind_ids bigint[];
    times timestamptz[];
    from_hash bigint;
BEGIN
    SELECT w.tids, w.ids, w.window_full, w.exact INTO tids, ids, window_full, exact
        FROM {schema}.claim_window(the_topic, window_rows, scan_rows, pids, starts, seen) w;
    picked := {schema}.lock_heads(the_topic, tids, ids, max_rows, '{}', NOT exact, pids, starts, seen);
    IF cardinality(picked) < max_rows AND NOT exact THEN
        -- defer the rows behind candidates whose key's head waits
        SELECT coalesce(array_agg(b.ctid), '{}'), coalesce(array_agg(b.id), '{}'),
               coalesce(array_agg(b.until), '{}')
            INTO behind, behind_ids, times
            FROM (
                SELECT f.ctid, f.id, h.available_at AS until
                FROM unnest(tids, ids) c (tid, id)
                JOIN {schema}.outbox o ON o.ctid = c.tid AND o.id = c.id
                CROSS JOIN LATERAL (
                    SELECT e.id, e.key, e.available_at FROM {schema}.outbox e
                    WHERE e.topic = the_topic
                      AND hashtextextended(e.key, 0) >= hashtextextended(o.key, 0)
                      AND hashtextextended(e.key, 0) <= hashtextextended(o.key, 0) AND e.key = o.key
                    ORDER BY hashtextextended(e.key, 0), e.id LIMIT 1) h
                CROSS JOIN LATERAL (
                    SELECT f.ctid, f.id FROM {schema}.outbox f
                    WHERE f.topic = the_topic
                      AND hashtextextended(f.key, 0) >= hashtextextended(h.key, 0)
                      AND hashtextextended(f.key, 0) <= hashtextextended(h.key, 0) AND f.key = h.key
                      AND f.id > h.id AND f.available_at < h.available_at
                      AND (f.claimed_until IS NULL OR f.claimed_until < now())
                    ORDER BY hashtextextended(f.key, 0), f.id LIMIT max_rows) f
                WHERE h.id < o.id AND h.available_at > now()
                LIMIT max_rows) b;
        WITH locked AS (
            SELECT o.ctid, d.until
            FROM unnest(behind, behind_ids, times) d (tid, id, until)
            JOIN {schema}.outbox o ON o.ctid = d.tid AND o.id = d.id
            WHERE o.available_at < d.until
            FOR UPDATE OF o SKIP LOCKED)
        UPDATE {schema}.outbox o SET available_at = l.until
        FROM locked l WHERE o.ctid = l.ctid;
    END IF;
    IF cardinality(tids) < max_rows AND cardinality(picked) < max_rows AND window_full
       AND cardinality(behind) = 0 THEN
        from_hash := ((random() - 0.5) * 1.8e19)::bigint;
        SELECT w.tids, w.ids INTO tids, ids FROM {schema}.walk_keys(the_topic, from_hash, highest, window_rows) w;
        IF cardinality(tids) < window_rows THEN
            SELECT w.tids, w.ids INTO more_tids, more_ids
                FROM {schema}.walk_keys(the_topic, lowest, from_hash - 1, window_rows - cardinality(tids)) w;
            tids := tids || more_tids;
            ids := ids || more_ids;
        END IF;
        picked := picked || {schema}.lock_heads(
            the_topic, tids, ids, max_rows - cardinality(picked), picked, false, pids, starts, seen);
    END IF;
    RETURN picked;
END
$fn$;

-- claim: hand out up to max_rows changes of the given topics, never a row
-- while an older row of its topic and key is still in the outbox (pending,
-- in flight or waiting for a retry).  Each topic gets an equal share of
-- max_rows; what some topics leave is shared by the others.  Rows come in
-- id order within each topic.  A row in flight is handed out again once
-- its claim expired, or at once when the backend that claimed it is gone.
CREATE OR REPLACE FUNCTION {schema}.claim(
    topics text[], max_rows integer, token uuid, visibility double precision)
RETURNS SETOF {schema}.claimed
LANGUAGE plpgsql
-- With its owner's rights, as every function of the schema (since
-- version 3).  Every statement below reads indexes in their order, a
-- few rows at a time: their plans must not depend on statistics, which
-- lag behind a queue (a plan cached while the table was small, or chosen
-- on stale statistics, would scan and sort the whole backlog on every
-- claim).  No JIT either: the estimates of a big backlog would compile
-- every claim's statements (tens of milliseconds each) to read a few rows.
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
SET jit = off
AS $fn$
DECLARE
    until timestamptz := now() + make_interval(secs => visibility);
    wanted text[];
    hungry text[];
    remaining integer := max_rows;
    share integer;
    picked tid[];
    t text;
    seen timestamptz;
    pids integer[];
    starts timestamptz[];
BEGIN
    IF token IS NULL OR visibility IS NULL OR visibility <= 0 THEN
        RAISE EXCEPTION 'hermes claim: a token and a positive visibility are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the server's backends, read afresh after this time (see claim_free)
    PERFORM pg_stat_clear_snapshot();
    seen := clock_timestamp();
    SELECT array_agg(pg_stat_get_backend_pid(b)), array_agg(pg_stat_get_backend_start(b))
        INTO pids, starts
        FROM pg_stat_get_backend_idset() b;
    wanted := ARRAY(SELECT u.t FROM unnest(topics) WITH ORDINALITY u (t, n)
                    WHERE u.t IS NOT NULL GROUP BY u.t ORDER BY min(u.n));
    WHILE remaining > 0 AND cardinality(wanted) > 0 LOOP
        -- each topic's share of what is left; topics that fill theirs
        -- share what the others left in the next round
        share := ceil(remaining::numeric / cardinality(wanted));
        hungry := '{}';
        FOREACH t IN ARRAY wanted LOOP
            EXIT WHEN remaining <= 0;
            picked := {schema}.pick_topic(t, least(share, remaining), pids, starts, seen);
            RETURN QUERY
                WITH claimed AS (
                    UPDATE {schema}.outbox o
                    SET claim_token = token, claimed_until = until, attempts = o.attempts + 1,
                        claim_pid = pg_backend_pid(), claimed_at = now()
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

-- The claim's helpers are the claim's business.
REVOKE EXECUTE ON FUNCTION
    {schema}.claim_free(timestamptz, integer, timestamptz, integer[], timestamptz[], timestamptz),
    {schema}.walk_keys(text, bigint, bigint, integer),
    {schema}.lock_heads(text, tid[], bigint[], integer, tid[], boolean, integer[], timestamptz[], timestamptz),
    {schema}.claim_window(text, integer, integer, integer[], timestamptz[], timestamptz),
    {schema}.pick_topic(text, integer, integer[], timestamptz[], timestamptz)
    FROM PUBLIC;
