-- hermes_tx outbox, version 10: a few changes waiting for a retry no longer
-- make every claim check its candidates one by one.
--
-- Until version 9 a claim's window held the rows it could claim now and
-- the rows in flight, never the rows waiting for a retry (available later:
-- released, or deferred behind their key's head).  While any row waited,
-- the window could not tell whether a candidate had an older row of its
-- key among them, so every candidate was checked by an index probe of its
-- key (lock_heads with probe), and the rows behind waiting heads were found
-- by two more probes per candidate.  With 3% of changes failing once, some
-- row nearly always waits: claims of 500 took 4-5 ms more of the server's
-- time than without failures (Elasticsearch with 3% of items answered 429:
-- lock_heads 4.2-5.5 ms a claim against 2.1-2.4 ms).
--
-- Now the window also reads the rows that wait (at most window_rows of
-- them, by the time they become available), as rows that are not free: the
-- rows behind them are blocked, as behind a row in flight, and the window
-- is exact again (no probe) while every waiting row fits in it.  It also
-- returns the free rows it saw behind a waiting row, with that row's time:
-- a claim that comes back short defers them (as before, found by probes)
-- without looking for them again.  Past window_rows waiting rows (100,000
-- keys waiting for a retry, say), claims work as in version 9.

DROP FUNCTION {schema}.pick_topic(text, integer, boolean, integer[], timestamptz[], timestamptz);
DROP FUNCTION {schema}.claim_window(text, integer, integer, boolean, integer[], timestamptz[], timestamptz);

-- claim_window: as in version 9, the rows waiting for a retry in the
-- window too (see the top of this file).  exact: every row back from a
-- retry and every row waiting for one is in the window.  behind_*: the
-- free rows behind a waiting row of their key (ctid, id, and the time of
-- the latest waiting row before it).
CREATE FUNCTION {schema}.claim_window(
    the_topic text, window_rows integer, scan_rows integer, runs boolean,
    pids integer[], starts timestamptz[], seen timestamptz,
    OUT tids tid[], OUT ids bigint[], OUT ranks integer[], OUT window_full boolean, OUT exact boolean,
    OUT behind_tids tid[], OUT behind_ids bigint[], OUT behind_until timestamptz[])
LANGUAGE plpgsql
AS $fn$
DECLARE
    highest constant bigint := 9223372036854775807;
    -- waiting rows read at most: past it, the window is not exact
    wait_rows constant integer := window_rows;
    later_at timestamptz;
    later_id bigint;
    fresh_id bigint;
    later_free bigint;
    later_rows bigint;
    fresh_free bigint;
    fresh_rows bigint;
    waiting bigint;
BEGIN
    IF current_setting('server_version_num')::integer >= 150000
       AND coalesce(current_setting('hermes.claim_window', true), '') <> 'bounds' THEN
        WITH win AS (
            (SELECT 'l' AS part, l.id, l.tid, l.h, l.free, l.n, NULL::timestamptz AS at FROM (
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
            (SELECT 'f', r.id, r.tid, r.h, r.free, r.n, NULL FROM (
                SELECT o.id, o.ctid AS tid, hashtextextended(o.key, 0) AS h, f.free,
                       count(*) FILTER (WHERE f.free)
                           OVER (ORDER BY o.topic, o.id ROWS UNBOUNDED PRECEDING) AS n
                FROM {schema}.outbox o
                CROSS JOIN LATERAL (SELECT {schema}.claim_free(
                    o.claimed_until, o.claim_pid, o.claimed_at, pids, starts, seen) AS free) f
                WHERE o.topic >= the_topic AND o.topic <= the_topic AND o.available_at <= o.created_at) r
             WHERE r.n <= window_rows
             LIMIT scan_rows)
            UNION ALL
            (SELECT 'w', o.id, o.ctid, hashtextextended(o.key, 0), false, 0::bigint, o.available_at
             FROM {schema}.outbox o
             WHERE o.topic = the_topic AND o.available_at > o.created_at AND o.available_at > now()
             ORDER BY o.topic, o.available_at, o.id LIMIT wait_rows)
        )
        SELECT coalesce(array_agg(w.tid) FILTER (WHERE w.candidate), '{}'),
               coalesce(array_agg(w.id) FILTER (WHERE w.candidate), '{}'),
               coalesce(array_agg(w.rank) FILTER (WHERE w.candidate), '{}'),
               coalesce(max(w.n) FILTER (WHERE w.part = 'l'), 0), count(*) FILTER (WHERE w.part = 'l'),
               coalesce(max(w.n) FILTER (WHERE w.part = 'f'), 0), count(*) FILTER (WHERE w.part = 'f'),
               count(*) FILTER (WHERE w.part = 'w'),
               coalesce(array_agg(w.tid) FILTER (WHERE w.behind), '{}'),
               coalesce(array_agg(w.id) FILTER (WHERE w.behind), '{}'),
               coalesce(array_agg(w.until) FILTER (WHERE w.behind), '{}')
            INTO tids, ids, ranks, later_free, later_rows, fresh_free, fresh_rows, waiting,
                 behind_tids, behind_ids, behind_until
            FROM (SELECT w.*, w.free AND w.blocked = 0 AND (runs OR w.rank = 0) AS candidate,
                         w.free AND w.until IS NOT NULL AS behind
                  FROM (SELECT w.*,
                               count(*) FILTER (WHERE NOT w.free) OVER k AS blocked,
                               (count(*) FILTER (WHERE w.free) OVER k)::integer AS rank,
                               max(w.at) OVER k AS until
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
                    {schema}.claim_free(o.claimed_until, o.claim_pid, o.claimed_at, pids, starts, seen) AS free,
                    NULL::timestamptz AS at
             FROM {schema}.outbox o
             WHERE o.topic = the_topic AND o.available_at > o.created_at AND o.available_at <= now()
               AND (o.available_at, o.id) <= (coalesce(later_at, 'infinity'), coalesce(later_id, highest))
             ORDER BY o.topic, o.available_at, o.id LIMIT scan_rows)
            UNION ALL
            (SELECT 'f', o.id, o.ctid, hashtextextended(o.key, 0),
                    {schema}.claim_free(o.claimed_until, o.claim_pid, o.claimed_at, pids, starts, seen), NULL
             FROM {schema}.outbox o
             WHERE o.topic >= the_topic AND o.topic <= the_topic AND o.available_at <= o.created_at
               AND o.id <= coalesce(fresh_id, highest)
             ORDER BY o.topic, o.id LIMIT scan_rows)
            UNION ALL
            (SELECT 'w', o.id, o.ctid, hashtextextended(o.key, 0), false, o.available_at
             FROM {schema}.outbox o
             WHERE o.topic = the_topic AND o.available_at > o.created_at AND o.available_at > now()
             ORDER BY o.topic, o.available_at, o.id LIMIT wait_rows)
        )
        SELECT coalesce(array_agg(w.tid) FILTER (WHERE w.candidate), '{}'),
               coalesce(array_agg(w.id) FILTER (WHERE w.candidate), '{}'),
               coalesce(array_agg(w.rank) FILTER (WHERE w.candidate), '{}'),
               count(*) FILTER (WHERE w.part = 'l' AND w.free), count(*) FILTER (WHERE w.part = 'l'),
               count(*) FILTER (WHERE w.part = 'f' AND w.free), count(*) FILTER (WHERE w.part = 'f'),
               count(*) FILTER (WHERE w.part = 'w'),
               coalesce(array_agg(w.tid) FILTER (WHERE w.behind), '{}'),
               coalesce(array_agg(w.id) FILTER (WHERE w.behind), '{}'),
               coalesce(array_agg(w.until) FILTER (WHERE w.behind), '{}')
            INTO tids, ids, ranks, later_free, later_rows, fresh_free, fresh_rows, waiting,
                 behind_tids, behind_ids, behind_until
            FROM (SELECT w.*, w.free AND w.blocked = 0 AND (runs OR w.rank = 0) AS candidate,
                         w.free AND w.until IS NOT NULL AS behind
                  FROM (SELECT w.*,
                               count(*) FILTER (WHERE NOT w.free) OVER k AS blocked,
                               (count(*) FILTER (WHERE w.free) OVER k)::integer AS rank,
                               max(w.at) OVER k AS until
                        FROM win w
                        WINDOW k AS (PARTITION BY w.h ORDER BY w.id
                                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) w) w;
    END IF;
    window_full := later_free >= window_rows OR fresh_free >= window_rows
        OR later_rows >= scan_rows OR fresh_rows >= scan_rows;
    exact := later_free < window_rows AND later_rows < scan_rows AND waiting < wait_rows;
END
$fn$;

-- pick_topic: as in version 9; while the window is exact, the rows behind
-- waiting heads are the window's (behind_*), deferred when the claim came
-- back short.
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
    behind_ids bigint[] := '{}';
    times timestamptz[] := '{}';
    seen_behind tid[];
    seen_behind_ids bigint[];
    seen_times timestamptz[];
    from_hash bigint;
BEGIN
    SELECT w.tids, w.ids, w.ranks, w.window_full, w.exact, w.behind_tids, w.behind_ids, w.behind_until
        INTO tids, ids, ranks, window_full, exact, seen_behind, seen_behind_ids, seen_times
        FROM {schema}.claim_window(the_topic, window_rows, scan_rows, runs, pids, starts, seen) w;
    picked := {schema}.lock_heads(the_topic, tids, ids, ranks, max_rows, '{}', NOT exact, pids, starts, seen);
    IF cardinality(picked) < max_rows AND exact THEN
        behind := seen_behind;
        behind_ids := seen_behind_ids;
        times := seen_times;
    ELSIF cardinality(picked) < max_rows THEN
        -- too many rows wait to be in the window: the rows behind those
        -- it holds, and those behind candidates whose key's head waits
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
        behind := seen_behind || behind;
        behind_ids := seen_behind_ids || behind_ids;
        times := seen_times || times;
    END IF;
    IF cardinality(behind) > 0 THEN
        -- defer them to their head's time
        WITH locked AS (
            SELECT o.ctid, d.until
            FROM unnest(behind, behind_ids, times) d (tid, id, until)
            JOIN {schema}.outbox o ON o.ctid = d.tid AND o.id = d.id
            WHERE o.available_at < d.until
            FOR UPDATE OF o SKIP LOCKED)
        UPDATE {schema}.outbox o SET available_at = l.until
        FROM locked l WHERE o.ctid = l.ctid;
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

REVOKE EXECUTE ON FUNCTION
    {schema}.claim_window(text, integer, integer, boolean, integer[], timestamptz[], timestamptz),
    {schema}.pick_topic(text, integer, boolean, integer[], timestamptz[], timestamptz)
    FROM PUBLIC;
