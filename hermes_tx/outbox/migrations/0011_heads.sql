-- hermes_tx outbox, version 11: a claim locks the oldest change of each
-- key without ranking its candidates again.
--
-- lock_heads() ranked its candidates by key once more (a window over their
-- keys' hashes), to keep a change of a run only behind the changes of its
-- key before it.  When every candidate is the oldest free change of its
-- key (rank 0: always without runs, and with runs while no key has two
-- candidates, as in a backlog of one change per key, or heads found one
-- per key) and none needs the probe, each key has one candidate and there
-- is nothing to rank: the candidates are locked in id order, as before.
-- The no-op drain's statements took 9% fewer instructions of the server
-- (bench/outbox_instructions.py: claim_runs + ack 112,600 a change, now
-- 102,600).  The function's grants are unchanged (CREATE OR REPLACE).

CREATE OR REPLACE FUNCTION {schema}.lock_heads(
    the_topic text, tids tid[], ids bigint[], ranks integer[], max_rows integer, picked tid[],
    probe boolean, pids integer[], starts timestamptz[], seen timestamptz)
RETURNS tid[]
LANGUAGE plpgsql
AS $fn$
BEGIN
    IF NOT probe AND 0 = ALL (ranks) THEN
        -- every candidate the oldest free change of its key, one per key:
        -- nothing to rank
        RETURN ARRAY(
            SELECT o.ctid
            FROM (SELECT u.tid, u.id FROM unnest(tids, ids) u (tid, id) ORDER BY u.id OFFSET 0) c
            JOIN {schema}.outbox o ON o.ctid = c.tid AND o.id = c.id
            WHERE o.available_at <= now()
              AND {schema}.claim_free(o.claimed_until, o.claim_pid, o.claimed_at, pids, starts, seen)
              AND o.ctid <> ALL (picked)
            ORDER BY c.id
            LIMIT max_rows
            FOR UPDATE OF o SKIP LOCKED);
    END IF;
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
