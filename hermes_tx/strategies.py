# -*- test-case-name: tests.test_strategies -*-
"""
Error strategies decide what a component does about an exception (backoff
policies, which decide how long it waits, live in L{hermes_tx.runtime.backoff}).

An error strategy's C{handle_exception(error)} returns C{(expected, action)}:
C{expected} says whether the error is part of normal life (a dropped
connection) rather than a bug, and C{action} is one of L{CONTINUE},
L{BACKOFF} or L{TERMINATE}.
"""

import psycopg2
import psycopg2.errors
from twisted.internet import error as _twisted_error

from hermes_tx.exceptions import ConnectionLostError, StandbyServerError

#: Log the error and go on with the next item at once.
CONTINUE = "CONTINUE"
#: Log the error, wait (1, 2, 4 ... C{backoff_limit} seconds), then go on.
BACKOFF = "BACKOFF"
#: Stop the component and report C{(expected, action)} on its error queue.
TERMINATE = "TERMINATE"

ACTIONS = (CONTINUE, BACKOFF, TERMINATE)

# SQLSTATEs (and SQLSTATE classes) that mean "the server or the connection is
# not usable right now; try again later".  Classified by code, never by
# message text: messages are translated (lc_messages) and change between
# PostgreSQL releases.
_TRANSIENT_SQLSTATE_CLASSES = (
    "08",  # connection exception
    "53",  # insufficient resources: too many connections, out of memory
)
_TRANSIENT_SQLSTATES = frozenset(
    [
        "57P01",  # admin_shutdown: pg_terminate_backend, smart/fast shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now: starting up, shutting down, recovery
        "57P05",  # idle_session_timeout
        "57014",  # query_canceled: cut short by statement_timeout; may fit later
        "25006",  # read_only_sql_transaction: a standby refusing LISTEN/writes
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
    ]
)


class AbstractErrorStrategy:
    """
    Decides what a component does about an exception.  Subclasses implement
    L{handle_exception}.
    """

    def handle_exception(self, error):
        """
        @param error: the exception a component caught.
        @return: C{(expected, action)}: C{expected} is a bool, C{action} one
            of L{CONTINUE}, L{BACKOFF}, L{TERMINATE}.
        """
        raise NotImplementedError("Subclasses MUST override 'handle_exception'")


def is_connection_error(error):
    """
    @return: True when C{error} means the connection to PostgreSQL is gone or
        could not be made (as opposed to an error in one statement).
    """
    if isinstance(
        error,
        (
            ConnectionLostError,
            psycopg2.InterfaceError,
            _twisted_error.ConnectionLost,
            _twisted_error.ConnectionDone,
        ),
    ):
        return True
    if isinstance(error, psycopg2.errors.QueryCanceled):
        return False  # a statement cut short (57014): the connection is fine
    if isinstance(error, psycopg2.OperationalError):
        code = error.pgcode
        # libpq reports failures to connect or to talk to the server (refused,
        # unknown host, wrong password, no such database, "server closed the
        # connection unexpectedly") without a SQLSTATE.
        return code is None or code[:2] == "08" or code in ("57P01", "57P02", "57P03")
    return False


def is_transient_database_error(error):
    """
    @return: True when C{error} is a psycopg2 error that trying again later can
        cure: a connection error or a transient SQLSTATE.
    """
    if is_connection_error(error) or isinstance(error, StandbyServerError):
        return True
    code = getattr(error, "pgcode", None)
    if not isinstance(error, psycopg2.Error) or code is None:
        return False
    return code in _TRANSIENT_SQLSTATES or code[:2] in _TRANSIENT_SQLSTATE_CLASSES


class CommonErrorStrategy(AbstractErrorStrategy):
    """
    The default strategy, classifying by exception class and SQLSTATE:

      - connection lost, admin shutdown, cannot connect, a standby refusing
        the statement, too many connections, serialization failures,
        deadlocks and statements cut short (C{statement_timeout}): C{(True,
        BACKOFF)};
      - any other database error (bad SQL, a violated constraint): the item
        is at fault, not the server: C{(True, CONTINUE)};
      - anything that is not a database error is a bug: C{(False, BACKOFF)},
        so a failing processor slows down instead of spinning or dying.
    """

    def handle_exception(self, error):
        if is_transient_database_error(error):
            return True, BACKOFF
        if isinstance(error, psycopg2.Error):
            return True, CONTINUE
        return False, BACKOFF
