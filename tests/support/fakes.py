"""
In-memory stand-ins for PostgreSQL connections, for tests of the Client,
the sources and their sessions driven by a L{twisted.internet.task.Clock}:
every answer is a Deferred the test fires (or an immediate one), every loss
is a call.
"""

from collections import namedtuple

from twisted.internet import defer
from twisted.python.failure import Failure

from hermes_tx.exceptions import ConnectionLostError
from hermes_tx.postgres.hosts import HostEntry

Notify = namedtuple("Notify", "channel payload pid")


class FakeConnection:
    """
    What a listener run uses of a L{hermes_tx.postgres.connection.HermesConnection}.

    @ivar in_recovery: what C{pg_is_in_recovery()} answers.
    @ivar hung: when true, C{SELECT 1} (the liveness probe) never answers.
    """

    def __init__(self, host=None, in_recovery=False):
        self.host = host
        self.in_recovery = in_recovery
        self.hung = False
        self.queries = []
        self.notify_sink = None
        self.paused = False
        self.is_open = True
        self._lost_observers = []

    def notify_on_lost(self, observer):
        self._lost_observers.append(observer)

    def runQuery(self, query, params=None):
        self.queries.append(str(query))
        if "pg_is_in_recovery" in str(query):
            return defer.succeed([[self.in_recovery]])
        if self.hung:
            return defer.Deferred()
        return defer.succeed([[1]])

    def runOperation(self, query, params=None):
        self.queries.append(str(query))
        return defer.succeed(None)

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False

    def deliver(self, *payloads, channel="c"):
        self.notify_sink([Notify(channel, p, 42) for p in payloads])

    def lose(self, error=None):
        """
        The server went away: observers are told, as a real connection does.
        """
        self.is_open = False
        reason = Failure(error or ConnectionLostError("server closed the connection unexpectedly"))
        for observer in self._lost_observers:
            observer(reason)

    def close(self):
        self.is_open = False


class Query:
    """
    One statement a L{ScriptedConnection} was given, waiting for the test's
    answer.

    @ivar statement: the statement (a string or a C{psycopg2.sql.Composable}).
    @ivar params: its parameters.
    @ivar deferred: what C{runQuery}/C{runOperation} returned.
    """

    def __init__(self, statement, params, deferred):
        self.statement = statement
        self.params = params
        self.deferred = deferred

    @property
    def waiting(self):
        return not self.deferred.called

    def answer(self, rows=()):
        """
        The server answers with C{rows} (a list of tuples).
        """
        self.deferred.callback(list(rows))

    def fail(self, error):
        """
        The server answers with an error (or the connection fails it).
        """
        self.deferred.errback(Failure(error))

    def __repr__(self):
        return f"<Query {self.statement!r} {self.params!r}>"


class ScriptedConnection(FakeConnection):
    """
    A connection whose every statement waits for the test: each is a
    L{Query} in C{asked}.  While C{prepare_at_once} is true, the role check
    (C{pg_is_in_recovery()}, answering C{in_recovery}) and C{LISTEN} are
    answered at once, so a source's run works as soon as it connects.
    """

    def __init__(self, host=None, in_recovery=False, prepare_at_once=True):
        FakeConnection.__init__(self, host=host, in_recovery=in_recovery)
        self.prepare_at_once = prepare_at_once
        self.asked = []

    def runQuery(self, query, params=None):
        self.queries.append(str(query))
        if self.prepare_at_once and "pg_is_in_recovery" in str(query):
            return defer.succeed([(self.in_recovery,)])
        return self._ask(query, params)

    def runOperation(self, query, params=None):
        self.queries.append(str(query))
        if self.prepare_at_once and "LISTEN" in str(query):
            return defer.succeed(None)
        return self._ask(query, params)

    def _ask(self, query, params):
        d = defer.Deferred()
        self.asked.append(Query(query, params, d))
        return d

    def waiting(self, statement=None):
        """
        @return: the L{Query}s not answered yet (of C{statement} only, when
            given), oldest first.
        """
        return [q for q in self.asked
                if q.waiting and (statement is None or q.statement == statement)]

    def one(self, statement=None):
        """
        @return: the one L{Query} waiting (of C{statement}); fails the test
            (AssertionError) when there is not exactly one.
        """
        waiting = self.waiting(statement)
        if len(waiting) != 1:
            raise AssertionError(f"expected one query waiting, not {waiting!r}")
        return waiting[0]


class FakeListenConnector:
    """
    A source's connector.  Each C{connect()} makes a connection (kept in
    C{connections}; a L{FakeConnection}, or what C{connection_factory} makes)
    at once, or fails with C{refuse} when set, or waits when C{hold} is true
    (C{pending} holds the Deferreds).
    """

    def __init__(self, hosts=None, connection_factory=FakeConnection):
        self.hosts = list(hosts or [HostEntry("", "", "")])
        self.connection_factory = connection_factory
        self.pinned = None
        self.refuse = None
        self.hold = False
        self.in_recovery = False
        self.connections = []
        self.pending = []
        self.connection = None
        self.disconnects = 0

    def pin(self, entry):
        self.pinned = entry if entry in self.hosts and len(self.hosts) > 1 else None
        return self.pinned is not None

    def connect(self):
        if self.refuse is not None:
            return defer.fail(self.refuse)
        if self.hold:
            d = defer.Deferred()
            self.pending.append(d)
            return d
        return defer.succeed(self._open())

    def _open(self):
        conn = self.connection_factory(host=self.pinned, in_recovery=self.in_recovery)
        self.connections.append(conn)
        self.connection = conn
        return conn

    def release(self):
        """
        Fire the oldest held connect() with a new connection.
        """
        self.pending.pop(0).callback(self._open())

    @property
    def current(self):
        return self.connections[-1] if self.connections else None

    def disconnect(self):
        self.disconnects += 1
        if self.connection is not None:
            self.connection.close()
        self.connection = None
        return defer.succeed(None)


class FakeRoleConnector:
    """
    A role-check connector for one host: C{answer} is C{"primary"},
    C{"standby"}, an exception (unreachable) or C{None} (the check waits;
    C{pending} holds it).
    """

    def __init__(self, answer="primary"):
        self.answer = answer
        self.checks = 0
        self.pending = []
        self.is_connected = False
        self.disconnects = 0

    def is_server_master(self):
        self.checks += 1
        if isinstance(self.answer, BaseException):
            self.is_connected = False
            return defer.fail(self.answer)
        if self.answer is None:
            d = defer.Deferred()
            self.pending.append(d)
            return d
        self.is_connected = True
        return defer.succeed(self.answer == "primary")

    def disconnect(self):
        self.disconnects += 1
        self.is_connected = False
        pending, self.pending = self.pending, []
        for d in pending:
            d.errback(ConnectionLostError("closed"))
        return defer.succeed(None)


class FakeHosts:
    """
    A C{connector_factory} for L{hermes_tx.client.Client} making one
    L{FakeRoleConnector} per host, kept by port (C{self[port]}).
    """

    def __init__(self, **answers):
        self.answers = answers
        self.connectors = {}

    def __call__(self, params):
        port = params.get("port", "")
        connector = FakeRoleConnector(self.answers.get(f"p{port}", "primary"))
        self.connectors[port] = connector
        return connector

    def __getitem__(self, port):
        return self.connectors[str(port)]
