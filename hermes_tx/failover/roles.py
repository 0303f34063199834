# -*- test-case-name: tests.test_roles -*-
"""
Asking PostgreSQL servers their role: primary, or standby in recovery.

A L{HostProbe} asks one host (C{pg_is_in_recovery()}) on a kept
connection; L{check_roles} asks every host of a DSN at once and says which
one, if any, is the primary.  Asking each host directly, rather than
letting libpq walk a multi-host DSN, gives the role of every host (so a
Client parked on a standby keeps looking for the primary among them), does
not wait for one dead host before asking the next, and never leaves the
choice to C{target_session_attrs}.
"""

from collections import namedtuple

from twisted.internet import defer
from twisted.python.failure import Failure

from hermes_tx import strategies
from hermes_tx.exceptions import ConnectionLostError, one_line

PRIMARY, STANDBY, UNKNOWN = "primary", "standby", "unknown"
ROLES = (PRIMARY, STANDBY, UNKNOWN)

#: One host's answer: its L{hermes_tx.postgres.hosts.HostEntry}, its role
#: (C{None} while unanswered) and, when unreachable, the error as one line.
HostStatus = namedtuple("HostStatus", "entry role error")


class RoleResult(namedtuple("RoleResult", "role primary hosts")):
    """
    The outcome of one role check.

    @ivar role: L{PRIMARY} when a host is the primary, else L{STANDBY} when
        a host answered as a standby, else L{UNKNOWN}.
    @ivar primary: the L{hermes_tx.postgres.hosts.HostEntry} of the primary, or
        C{None}.
    @ivar hosts: a L{HostStatus} per host, in the DSN's order.
    """

    @classmethod
    def unknown(cls, entries=()):
        return cls(UNKNOWN, None, tuple(HostStatus(e, None, None) for e in entries))


class HostProbe:
    """
    Asks one host its role, on a kept connection.

    @ivar entry: the L{hermes_tx.postgres.hosts.HostEntry} asked.
    @ivar connector: its L{hermes_tx.connectors.PostgresConnector}.
    """

    def __init__(self, entry, connector, clock, timeout):
        """
        @param timeout: seconds an attempt may take; then its connection is
            dropped (a hung server never answers).
        """
        self.entry = entry
        self.connector = connector
        self.clock = clock
        self.timeout = timeout
        self._waiters = []  # askers of the question that is out
        self._closed = False  # close() was called: no new connection until asked again

    def ask(self):
        """
        @return: a Deferred firing L{PRIMARY} or L{STANDBY}, or failing with
            the reason the host could not be asked.  Asking while a question
            is out shares its answer: questions never pile up on a host.
        """
        d = defer.Deferred()
        self._waiters.append(d)
        self._closed = False
        if len(self._waiters) == 1:
            self._ask().addBoth(self._answered)
        return d

    def _answered(self, result):
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(result)

    @defer.inlineCallbacks
    def _ask(self):
        kept = self.connector.is_connected
        try:
            is_master = yield self._attempt()
        except Exception as error:
            # The kept connection may have died since the last check
            # (server restarted, failed over, path gone): one fresh
            # connection before concluding anything.
            # Not after close(): that is what ended the connection.
            if self._closed or not (kept and strategies.is_connection_error(error)):
                raise
            is_master = yield self._attempt()
        return PRIMARY if is_master else STANDBY

    def _attempt(self):
        timed_out = []

        def time_out():
            timed_out.append(True)
            self.connector.disconnect()  # fails the query

        timer = self.clock.callLater(self.timeout, time_out)

        def done(result):
            if timer.active():
                timer.cancel()
            if timed_out and isinstance(result, Failure):
                return Failure(
                    ConnectionLostError(f"no answer within {self.timeout:g} s")
                )
            return result

        # maybeDeferred: a connector that raises must fail this check, not
        # stop role checking altogether.
        return defer.maybeDeferred(self.connector.is_server_master).addBoth(done)

    def close(self):
        """
        Drop the kept connection; a question out fails (it is not asked
        again on a fresh connection).
        """
        self._closed = True
        self.connector.disconnect()


def check_roles(probes, prefer=None, on_status=None):
    """
    Ask every host at once.

    @param probes: L{HostProbe}s, in the DSN's order.
    @param prefer: C{None}, or the L{hermes_tx.postgres.hosts.HostEntry} that was
        the primary: while it has not answered, another host's claim to be
        the primary waits for it (two primaries at once, as in a split
        brain, must not make the Client hop between them).
    @param on_status: C{None}, or called with each host's L{HostStatus} as
        it arrives, also after the result is decided.
    @return: a Deferred firing with a L{RoleResult} as soon as the primary
        is known, or once every host has answered or failed.  It never
        fails.
    """
    statuses = [HostStatus(p.entry, None, None) for p in probes]
    result = defer.Deferred()

    def decide():
        if result.called:
            return
        primaries = [s for s in statuses if s.role == PRIMARY]
        waiting = any(s.role is None for s in statuses)
        preferred = [s for s in statuses if prefer is not None and s.entry == prefer]
        if preferred and preferred[0].role is None and primaries:
            return  # let the former primary speak first
        if preferred and preferred[0].role == PRIMARY:
            result.callback(RoleResult(PRIMARY, prefer, tuple(statuses)))
        elif primaries:
            result.callback(RoleResult(PRIMARY, primaries[0].entry, tuple(statuses)))
        elif not waiting:
            role = STANDBY if any(s.role == STANDBY for s in statuses) else UNKNOWN
            result.callback(RoleResult(role, None, tuple(statuses)))

    def settle(index, status):
        statuses[index] = status
        if on_status is not None:
            on_status(status)
        decide()

    for index, probe in enumerate(probes):
        d = probe.ask()
        d.addCallbacks(
            lambda role, i=index, e=probe.entry: settle(i, HostStatus(e, role, None)),
            lambda f, i=index, e=probe.entry: settle(i, HostStatus(e, UNKNOWN, one_line(f.value))),
        )
    if not probes:
        result.callback(RoleResult(UNKNOWN, None, ()))
    return result
