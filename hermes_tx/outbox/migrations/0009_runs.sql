-- hermes_tx outbox, version 9: a claim may hand out a run of a key's
-- changes, not only its oldest.
--
-- claim() hands out the oldest change of a key and nothing more of it
-- until that change has left the outbox: a key whose change failed, or a
-- busy key, gets one change per claim and acknowledgement (a round trip
-- each).  claim_runs() also hands out, behind a key's oldest change, the
-- changes that follow it, in order, in the same claim: a change whose
-- older changes of its key are all taken by this claim before it.  The
-- consumer hands them to its processor one at a time per key, each once
-- the one before it is acknowledged, and gives back what follows a change
-- that failed (hermes_tx.outbox.runs).  A key with a change in flight is
-- still in flight for every claim, claim_runs() included.  claim() itself
-- is unchanged.
--
-- Runs are taken breadth first: a claim takes the oldest change of as many
-- keys as it can, then the second of each, and so on, so a processor's
-- batches stay as wide as the keys allow.

DROP FUNCTION {schema}.pick_topic(text, integer, integer[], timestamptz[], timestamptz);
DROP FUNCTION {schema}.lock_heads(text, tid[], bigint[], integer, tid[], boolean, integer[], timestamptz[],
                                  timestamptz);
DROP FUNCTION {schema}.claim_window(text, integer, integer, integer[], timestamptz[], timestamptz);

-- claim_window: as in version 4, and for runs: a row of the window is a
-- candidate when it is free and no row of its key before it in the window
-- is not (in flight); its rank is the number of free rows of its key
-- before it in the window (0: the oldest; without runs only those).
-- Returns the candidates' ctids, ids and ranks (in no order).
CREATE FUNCTION {schema}.claim_window(
    the_topic text, window_rows integer, scan_rows integer, runs boolean,
    pids integer[], starts timestamptz[], seen timestamptz,
    OUT tids tid[], OUT ids bigint[], OUT ranks integer[], OUT window_full boolean, OUT exact boolean)
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
        SELECT coalesce(array_agg(w.tid) FILTER (WHERE w.candidate), '{}'),
               coalesce(array_agg(w.id) FILTER (WHERE w.candidate), '{}'),
               coalesce(array_agg(w.rank) FILTER (WHERE w.candidate), '{}'),
               coalesce(max(w.n) FILTER (WHERE w.part = 'l'), 0), count(*) FILTER (WHERE w.part = 'l'),
               coalesce(max(w.n) FILTER (WHERE w.part = 'f'), 0), count(*) FILTER (WHERE w.part = 'f')
            INTO tids, ids, ranks, later_free, later_rows, fresh_free, fresh_rows
            FROM (SELECT w.*, w.free AND w.blocked = 0 AND (runs OR w.rank = 0) AS candidate
                  FROM (SELECT w.*,
                               count(*) FILTER (WHERE NOT w.free) OVER k AS blocked,
                               (count(*) FILTER (WHERE w.free) OVER k)::integer AS rank
                        FROM win w
                        WINDOW k AS (PARTITION BY w.h ORDER BY w.id
                                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) w) w;
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
        SELECT coalesce(array_agg(w.tid) FILTER (WHERE w.candidate), '{}'),
               coalesce(array_agg(w.id) FILTER (WHERE w.candidate), '{}'),
               coalesce(array_agg(w.rank) FILTER (WHERE w.candidate), '{}'),
               count(*) FILTER (WHERE w.part = 'l' AND w.free), count(*) FILTER (WHERE w.part = 'l'),
               count(*) FILTER (WHERE w.part = 'f' AND w.free), count(*) FILTER (WHERE w.part = 'f')
            INTO tids, ids, ranks, later_free, later_rows, fresh_free, fresh_rows
            FROM (SELECT w.*, w.free AND w.blocked = 0 AND (runs OR w.rank = 0) AS candidate
                  FROM (SELECT w.*,
                               count(*) FILTER (WHERE NOT w.free) OVER k AS blocked,
                               (count(*) FILTER (WHERE w.free) OVER k)::integer AS rank
                        FROM win w
                        WINDOW k AS (PARTITION BY w.h ORDER BY w.id
                                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) w) w;
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

-- lock_heads: lock up to max_rows of the candidates (rows of the_topic,
-- given as the versions an earlier statement saw: their ctids, ids and
-- ranks), by rank then id, that are claimable now (available, and free as
-- far as their claim goes), leaving out rows already picked.  With probe,
-- only those with as many older rows of their key as their rank (one
-- index scan each: the candidates before them); without, the caller knows
-- they are.  A candidate changed since it was seen (for one, deleted and
-- inserted again by a dead letter's retry, which puts an older row before
-- it) is no longer that version: it is not locked.  A row of rank r is
-- kept only with the r candidates of its key before it: one that another
-- claim locked first ends the key's run there.
CREATE FUNCTION {schema}.lock_heads(
    the_topic text, tids tid[], ids bigint[], ranks integer[], max_rows integer, picked tid[],
    probe boolean, pids integer[], starts timestamptz[], seen timestamptz)
RETURNS tid[]
LANGUAGE plpgsql
AS $fn$
BEGIN
    RETURN ARRAY(
        SELECT l.ctid FROM (
            SELECT l.ctid, l.rank, row_number() OVER (PARTITION BY l.h ORDER BY l.rank) - 1 AS place
            FROM (
                SELECT o.ctid, c.rank, hashtextextended(o.key, 0) AS h
                FROM (SELECT u.tid, u.id, u.rank FROM unnest(tids, ids, ranks) u (tid, id, rank)
                      ORDER BY u.rank, u.id OFFSET 0) c
                JOIN {schema}.outbox o ON o.ctid = c.tid AND o.id = c.id
                WHERE o.available_at <= now()
                  AND {schema}.claim_free(o.claimed_until, o.claim_pid, o.claimed_at, pids, starts, seen)
                  AND o.ctid <> ALL (picked)
                  AND (NOT probe OR (SELECT count(*) FROM (
                      SELECT 1 FROM {schema}.outbox e
                      WHERE e.topic = the_topic
                        AND hashtextextended(e.key, 0) >= hashtextextended(o.key, 0)
                        AND hashtextextended(e.key, 0) <= hashtextextended(o.key, 0) AND e.key = o.key
                        AND e.id < o.id
                      LIMIT c.rank + 1) e) = c.rank)
                ORDER BY c.rank, c.id
                LIMIT max_rows
                FOR UPDATE OF o SKIP LOCKED) l) l
        WHERE l.place = l.rank);
END
$fn$;

-- pick_topic: as in version 4 (the window's candidates, then the rows
-- behind waiting heads deferred, then a walk over keys), with runs or not;
-- after deferring rows it reads the window again and locks what it now
-- finds, so a claim that met keys newly held back still comes back full.
CREATE FUNCTION {schema}.pick_topic(
    the_topic text, max_rows integer, runs boolean, pids integer[], starts timestamptz[], seen timestamptz)
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
    ranks integer[];
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
    SELECT w.tids, w.ids, w.ranks, w.window_full, w.exact INTO tids, ids, ranks, window_full, exact
        FROM {schema}.claim_window(the_topic, window_rows, scan_rows, runs, pids, starts, seen) w;
    picked := {schema}.lock_heads(the_topic, tids, ids, ranks, max_rows, '{}', NOT exact, pids, starts, seen);
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
        IF cardinality(behind) > 0 THEN
            -- The window again, without the rows just deferred: the claim
            -- fills up with what follows them (a claim that came back short
            -- would stop a consumer claiming ahead until its next batch of
            -- acknowledgements).
            SELECT w.tids, w.ids, w.ranks, w.window_full, w.exact INTO tids, ids, ranks, window_full, exact
                FROM {schema}.claim_window(the_topic, window_rows, scan_rows, runs, pids, starts, seen) w;
            picked := picked || {schema}.lock_heads(
                the_topic, tids, ids, ranks, max_rows - cardinality(picked), picked, NOT exact,
                pids, starts, seen);
        END IF;
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
        -- heads, found one per key: rank 0 each
        picked := picked || {schema}.lock_heads(
            the_topic, tids, ids, array_fill(0, ARRAY[cardinality(tids)]), max_rows - cardinality(picked),
            picked, false, pids, starts, seen);
    END IF;
    RETURN picked;
END
$fn$;

-- claim_runs: claim(), and the changes behind a key's oldest in the same
-- claim (see the top of this file); with runs false, claim() itself.  The
-- consumer calls it with four arguments: no wrapper on its path.
CREATE FUNCTION {schema}.claim_runs(
    topics text[], max_rows integer, token uuid, visibility double precision, runs boolean DEFAULT true)
RETURNS SETOF {schema}.claimed
LANGUAGE plpgsql
-- See version 4's claim(): plans that read indexes in their order whatever
-- the statistics say, and no JIT.
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
            picked := {schema}.pick_topic(t, least(share, remaining), coalesce(runs, false), pids, starts, seen);
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

-- claim: unchanged (the oldest change of a key at a time).
CREATE OR REPLACE FUNCTION {schema}.claim(
    topics text[], max_rows integer, token uuid, visibility double precision)
RETURNS SETOF {schema}.claimed
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
SET jit = off
AS $fn$
    SELECT * FROM {schema}.claim_runs(topics, max_rows, token, visibility, false)
$fn$;

REVOKE EXECUTE ON FUNCTION
    {schema}.claim_window(text, integer, integer, boolean, integer[], timestamptz[], timestamptz),
    {schema}.lock_heads(text, tid[], bigint[], integer[], integer, tid[], boolean, integer[], timestamptz[],
                        timestamptz),
    {schema}.pick_topic(text, integer, boolean, integer[], timestamptz[], timestamptz),
    {schema}.claim_runs(text[], integer, uuid, double precision, boolean)
    FROM PUBLIC;

-- Whoever may claim may claim runs.
DO $do$
DECLARE
    grantee text;
BEGIN
    FOR grantee IN
        SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END
        FROM pg_proc p
        CROSS JOIN LATERAL aclexplode(p.proacl) a
        LEFT JOIN pg_roles r ON r.oid = a.grantee
        WHERE p.oid = format('%I.claim(text[], integer, uuid, double precision)',
                             {schema_literal})::regprocedure
          AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %I.claim_runs(text[], integer, uuid, double precision, boolean)'
                       ' TO %s',
                       {schema_literal}, grantee);
    END LOOP;
END
$do$;

COMMENT ON FUNCTION {schema}.claim_runs(text[], integer, uuid, double precision, boolean) IS
    'hermes_tx: claim, and runs of the changes behind a key''s oldest, breadth first';


-- ack: as in version 3, its DELETE planned without sequential scans.  The
-- rows are found by id; on an outbox that is nearly empty (a steady
-- trickle) but holds many rows deleted and not yet vacuumed, the planner's
-- statistics made a sequential scan look cheaper, and an acknowledgement
-- of a few rows read every page (0.75-1.07 ms each at 500 changes a
-- second; 0.06 ms through the primary key).  Set for the DELETE alone
-- and put back after it: set on the whole function, it made the
-- function slower.
CREATE OR REPLACE FUNCTION {schema}.ack(ids bigint[], token uuid)
RETURNS TABLE (id bigint)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    nothing_dead boolean;
    filter bytea;
    scans constant text := current_setting('enable_seqscan');
BEGIN
    -- (the filter in memory once, not fetched from its TOAST table per test)
    SELECT k.empty, CASE WHEN NOT k.empty THEN k.bits || ''::bytea END
        INTO nothing_dead, filter FROM {schema}.dead_keys k;
    PERFORM set_config('enable_seqscan', 'off', true);
    IF nothing_dead THEN
        RETURN QUERY
            DELETE FROM {schema}.outbox o
            WHERE o.id = ANY (ids) AND o.claim_token = token
            RETURNING o.id;
    ELSE
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
    END IF;
    PERFORM set_config('enable_seqscan', scans, true);
END
$fn$;
