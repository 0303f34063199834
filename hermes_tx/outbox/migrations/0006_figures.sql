-- hermes_tx outbox, version 6: the figures of /metrics, for consumers.
--
-- figures(topics, cap): per topic, in the order given, what /metrics shows
-- at a cost that does not grow with the backlog: the changes in the
-- outbox counted up to cap + 1 (of those, the claims alive are in
-- flight), the age of the oldest change (the oldest never delivered, or
-- among the cap + 1 that come back soonest from a retry), the dead letters
-- counted up to cap + 1.  A count past cap is replaced by the planner's
-- estimate (EXPLAIN: the statistics autovacuum keeps), and estimated says
-- so.  stats() counts everything (hermes-tx status).
--
-- Each topic's statements are planned for that topic (its name is part of
-- the statement): the statistics then say whether the topic is most of the
-- outbox (read in table order, its rows are found at once) or little of it
-- (read through an index).  One plan for every topic would read the whole
-- outbox in id order for a topic with no change.
--
-- With its owner's rights: a consumer has no right on the tables.
CREATE FUNCTION {schema}.figures(topics text[], cap integer)
RETURNS TABLE (topic text, pending bigint, in_flight bigint, oldest_age double precision,
               dead_letters bigint, estimated boolean)
LANGUAGE plpgsql
-- (not STABLE: EXPLAIN is refused in a function that is not volatile)
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    sampled bigint;
    plan json;
BEGIN
    FOREACH topic IN ARRAY topics LOOP
        estimated := false;
        EXECUTE format(
            'SELECT count(*), count(*) FILTER (WHERE s.claimed_until >= now())'
            ' FROM (SELECT o.claimed_until FROM %I.outbox o WHERE o.topic = %L LIMIT %s) s',
            {schema_literal}, topic, cap + 1) INTO sampled, in_flight;
        IF sampled > cap THEN
            EXECUTE format('EXPLAIN (FORMAT JSON) SELECT 1 FROM %I.outbox o WHERE o.topic = %L',
                           {schema_literal}, topic) INTO plan;
            sampled := greatest(sampled, (plan -> 0 -> 'Plan' ->> 'Plan Rows')::numeric::bigint);
            estimated := true;
        END IF;
        pending := greatest(sampled - in_flight, 0);
        -- The oldest change: the oldest fresh one (version 4's index of
        -- fresh rows, in id order) or one of the oldest cap + 1 waiting for a
        -- retry (their index, by the time they come back).
        EXECUTE format(
            'SELECT extract(epoch FROM now() - least('
            '  (SELECT o.created_at FROM %1$I.outbox o'
            '   WHERE o.topic = %2$L AND o.available_at <= o.created_at ORDER BY o.id LIMIT 1),'
            '  (SELECT min(w.created_at) FROM (SELECT o.created_at FROM %1$I.outbox o'
            '   WHERE o.topic = %2$L AND o.available_at > o.created_at'
            '   ORDER BY o.available_at, o.id LIMIT %3$s) w)))::double precision',
            {schema_literal}, topic, cap + 1) INTO oldest_age;
        EXECUTE format(
            'SELECT count(*) FROM (SELECT 1 FROM %I.dead_letters d WHERE d.topic = %L LIMIT %s) s',
            {schema_literal}, topic, cap + 1) INTO dead_letters;
        IF dead_letters > cap THEN
            EXECUTE format('EXPLAIN (FORMAT JSON) SELECT 1 FROM %I.dead_letters d WHERE d.topic = %L',
                           {schema_literal}, topic) INTO plan;
            dead_letters := greatest(dead_letters, (plan -> 0 -> 'Plan' ->> 'Plan Rows')::numeric::bigint);
            estimated := true;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$fn$;

REVOKE EXECUTE ON FUNCTION {schema}.figures(text[], integer) FROM PUBLIC;

-- Whoever may consume may read the figures (hermes-tx grants --consumer).
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
        EXECUTE format('GRANT EXECUTE ON FUNCTION %I.figures(text[], integer) TO %s',
                       {schema_literal}, grantee);
    END LOOP;
END
$do$;

COMMENT ON FUNCTION {schema}.figures(text[], integer) IS
    'hermes_tx: per topic, the figures of /metrics at a bounded cost (counts past cap estimated)';
