# -*- test-case-name: tests.test_statement_cut -*-
"""
A statement the server cut short (SQLSTATE 57014, C{query_canceled}: the
role's C{statement_timeout}, or C{pg_cancel_backend}): the connection is
fine and the same statement may succeed when tried again, so it is not a
reason to reconnect (reconnecting would also give up the claims the
connection's backend holds).  It is said in one line with the server's
message and the SQLSTATE, never as a bare C{CancelledError} (txpostgres
turns the error into one: L{hermes_tx.postgres.connection.HermesCursor}
keeps it).
"""

import psycopg2
import psycopg2.errors

#: the SQLSTATE of a statement cut short
QUERY_CANCELED = "57014"


def is_cut(error):
    """
    @return: True when C{error} is a statement the server cut short.
    """
    if isinstance(error, psycopg2.errors.QueryCanceled):
        return True
    return isinstance(error, psycopg2.Error) and getattr(error, "pgcode", None) == QUERY_CANCELED


def describe_cut(error):
    """
    @return: one line for a cut statement: the server's message and the
        SQLSTATE, e.g. C{canceling statement due to statement timeout
        (SQLSTATE 57014)}.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = lines[0] if lines else type(error).__name__
    return f"{message} (SQLSTATE {QUERY_CANCELED})"
