# -*- test-case-name: tests.test_session -*-
"""
L{Session}: one established connection as a source uses it, where no
query may hang for ever.

txpostgres cannot time a query out (C{addTimeout} on its Deferred does not
abort it), and a backend that stopped answering (SIGSTOP, a frozen host, a
network path that drops packets) looks alive to the socket.  So every query
of a session has a deadline: an answer that does not come in time means
the connection is dead.  The session then fails every query it was waiting
for and reports the loss once (the source closes the connection and makes
a new one).  It also remembers when the server last showed it was alive
(an answer, a notification), for the liveness probe
(L{hermes_tx.postgres.liveness}).
"""

from twisted.internet import defer
from twisted.python.failure import Failure

from hermes_tx.exceptions import ConnectionLostError


class Session:
    """
    @ivar conn: the connection (a L{hermes_tx.postgres.connection.HermesConnection}).
    @ivar deadline: seconds a query may wait for its answer, by default.
    @ivar last_activity: clock time of the last answer or notification.
    """

    def __init__(self, conn, clock, deadline, on_lost):
        """
        @param conn: an established connection: C{runQuery},
            C{runOperation}, C{notify_on_lost}.
        @param clock: an C{IReactorTime} for the deadlines.
        @param deadline: seconds a query may take by default (queued behind
            others included); C{None}: no deadline.
        @param on_lost: called once with the exception when the connection
            is found dead (a missed deadline, or the connection's own report
            of its loss); not after L{close}.
        """
        self.conn = conn
        self.clock = clock
        self.deadline = deadline
        self.last_activity = clock.seconds()
        self._on_lost = on_lost
        self._waiting = {}  # our Deferred -> its deadline's DelayedCall
        self._over = None  # the exception that ended the session, once over
        conn.notify_on_lost(lambda reason: self._lost(reason.value))

    @property
    def in_flight(self):
        """
        How many queries wait for their answer.
        """
        return len(self._waiting)

    def query(self, statement, params=None, deadline=None):
        """
        Run one statement and return its rows.

        @param deadline: seconds this one may take; C{None}: the session's.
        @return: a Deferred firing with the rows, or failing with the
            statement's error, or with L{ConnectionLostError} when the
            connection died first (its deadline passed, the server went).
        """
        return self._wait(self.conn.runQuery, statement, params, deadline)

    def operation(self, statement, params=None, deadline=None):
        """
        Like L{query} for a statement whose rows are not wanted.
        """
        return self._wait(self.conn.runOperation, statement, params, deadline)

    def _wait(self, run, statement, params, deadline):
        if self._over is not None:
            return defer.fail(self._over)
        seconds = self.deadline if deadline is None else deadline
        answer = defer.Deferred()
        timer = None if seconds is None else self.clock.callLater(seconds, self._missed, seconds)
        self._waiting[answer] = timer
        d = run(statement, params)
        d.addBoth(self._answered, answer)
        return answer

    def _answered(self, result, answer):
        if answer not in self._waiting:
            return None  # failed already, when the session ended
        timer = self._waiting.pop(answer)
        if timer is not None and timer.active():
            timer.cancel()
        self.last_activity = self.clock.seconds()
        if isinstance(result, Failure):
            answer.errback(result)
        else:
            answer.callback(result)
        return None

    def saw_notifications(self):
        """
        Notifications arrived: the server is alive.
        """
        self.last_activity = self.clock.seconds()

    def _missed(self, seconds):
        self._lost(ConnectionLostError(f"no answer from the server within {seconds:g} s"))

    def _lost(self, error):
        if self._over is not None:
            return
        self._end(error)
        self._on_lost(error)

    def _end(self, error):
        self._over = error
        waiting, self._waiting = self._waiting, {}
        for answer, timer in waiting.items():
            if timer is not None and timer.active():
                timer.cancel()
            answer.errback(Failure(error))

    def close(self):
        """
        The source is done with the connection: queries still waiting fail
        with L{ConnectionLostError}; no loss is reported.
        """
        if self._over is None:
            self._end(ConnectionLostError("the connection was closed"))
