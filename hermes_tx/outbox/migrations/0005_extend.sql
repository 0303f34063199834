-- hermes_tx outbox, version 5: an extension makes the claim its
-- backend's.
--
-- A claim ends with the backend that made it (version 4): once that
-- backend is gone any consumer may take the claim over.  A consumer whose
-- connection was lost keeps working on what it holds and extends those
-- claims on its next connection at once; the extension now records that
-- connection's backend, so the claims it kept are its own again (those
-- another consumer took over meanwhile are not extended: the consumer
-- counts them lost).
CREATE OR REPLACE FUNCTION {schema}.extend(ids bigint[], token uuid, visibility double precision)
RETURNS TABLE (id bigint)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN QUERY
        UPDATE {schema}.outbox o
        SET claimed_until = now() + make_interval(secs => visibility),
            claim_pid = pg_backend_pid(), claimed_at = now()
        WHERE o.id = ANY (ids) AND o.claim_token = token
        RETURNING o.id;
END
$fn$;
