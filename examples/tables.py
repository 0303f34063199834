"""
Processors that write to PostgreSQL tables, the other half of the work of
a typical river: each has its own L{PostgresConnector} (on the DSN in
C{$HERMES_DSN} unless given one), opened in C{set_up} and closed in
C{tear_down}, and returns the Deferred of its statement from C{execute},
so the next event waits for it.

  - L{Audit}: one row per event in C{hermes_audit}.
  - L{Latest}: a batch processor keeping C{hermes_latest} (the last JSON
    payload per key) with one statement per batch; run it with
    C{--payload-format json}.

Run one with:

    twistd -n hermes --dsn "$HERMES_DSN" --channel jobs --processor examples.tables:Audit
    twistd -n hermes --dsn "$HERMES_DSN" --channel items --payload-format json \\
        --processor examples.tables:Latest
"""

import os

from hermes_tx.components import Component
from hermes_tx.connectors import PostgresConnector
from hermes_tx.exceptions import one_line
from hermes_tx.outcomes import BatchOutcome, Retry
from hermes_tx.strategies import is_connection_error


def retry_if_unreachable(failure):
    """
    An errback: a lost or impossible connection means "not yet" (the same
    event is executed again after the backoff, never skipped); any other
    error stays an error for the error strategy (bad SQL, a constraint:
    logged and skipped).
    """
    if is_connection_error(failure.value):
        raise Retry(one_line(failure.value))
    return failure


class TableWriter(Component):
    """
    A processor with its own connection, made in C{set_up} along with its
    table (C{create}, a statement).
    """

    create = None

    def __init__(self, dsn=None, **kwargs):
        super().__init__(**kwargs)
        if dsn is None:
            dsn = os.environ.get("HERMES_DSN", "")
        self.db = PostgresConnector(dsn, application_name="hermes-" + type(self).__name__.lower())

    def set_up(self):
        return self.db.runOperation(self.create)

    def tear_down(self):
        return self.db.disconnect()


class Audit(TableWriter):
    """
    One row per event, written before the next event is taken.
    """

    create = """
        CREATE TABLE IF NOT EXISTS hermes_audit (
            id bigserial PRIMARY KEY,
            kind text NOT NULL,
            channel text,
            payload text,
            written_at timestamptz NOT NULL DEFAULT now())
    """

    def execute(self, event):
        d = self.db.runOperation(
            "INSERT INTO hermes_audit (kind, channel, payload) VALUES (%s, %s, %s)",
            (event.kind, event.channel, event.payload),
        )
        return d.addErrback(retry_if_unreachable)


class Latest(TableWriter):
    """
    The last payload per key: a notification's payload is a JSON object
    with a C{"key"}; up to 500 events are written with one statement.
    Payloads that are not such an object are rejected (logged and
    skipped), the rest of their batch is written.
    """

    max_batch = 500
    create = """
        CREATE TABLE IF NOT EXISTS hermes_latest (
            key text PRIMARY KEY,
            value jsonb NOT NULL)
    """
    upsert = """
        INSERT INTO hermes_latest (key, value)
        SELECT * FROM unnest(%s::text[], %s::jsonb[])
        ON CONFLICT (key) DO UPDATE SET value = excluded.value
    """

    def execute(self, events):
        outcome = BatchOutcome()
        latest = {}
        for event in events:
            if event.kind != "notification":
                continue  # "start" or "resync": a real river re-reads its source here
            data = getattr(event, "data", None)
            if not isinstance(data, dict) or "key" not in data:
                outcome.reject_event(event, "not a JSON object with a key")
                continue
            latest[str(data["key"])] = event.payload  # the last one of the batch wins
        if not latest:
            return outcome
        d = self.db.runOperation(self.upsert, (list(latest), list(latest.values())))
        d.addCallback(lambda _: outcome)
        return d.addErrback(retry_if_unreachable)
