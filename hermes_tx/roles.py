# -*- test-case-name: tests.test_failover -*-
"""
Asking a PostgreSQL server its role: primary, or standby in recovery.
"""

from twisted.internet import defer
from twisted.logger import Logger

from hermes_tx import strategies

PRIMARY, STANDBY, UNKNOWN = "primary", "standby", "unknown"
ROLES = (PRIMARY, STANDBY, UNKNOWN)

log = Logger()


def ask_role(connector, clock, timeout, wanted=lambda: True):
    """
    Ask the server C{pg_is_in_recovery()} on the connector's kept connection.

    @param connector: a L{hermes_tx.connectors.PostgresConnector}.
    @param clock: an C{IReactorTime} for the timeout.
    @param timeout: seconds an attempt may take; then its connection is
        dropped (a hung server never answers).
    @param wanted: a callable saying whether the answer is still wanted; a
        retry is only made while it returns true.
    @return: a Deferred firing L{PRIMARY} or L{STANDBY}, or failing with the
        error of the last attempt.
    """
    kept = connector.is_connected
    d = _attempt(connector, clock, timeout)
    if kept:
        # The kept connection may have died since the last check (server
        # restarted, failed over, path gone): one fresh connection before
        # concluding anything, rather than a backoff.
        def retry(failure):
            if wanted() and strategies.is_connection_error(failure.value):
                return _attempt(connector, clock, timeout)
            return failure

        d.addErrback(retry)
    return d.addCallback(lambda is_master: PRIMARY if is_master else STANDBY)


def _attempt(connector, clock, timeout):
    def timed_out():
        log.warn("role check got no answer in {t:g} s", t=timeout)
        connector.disconnect()  # fails the query; the next attempt reconnects

    timer = clock.callLater(timeout, timed_out)

    def cancel_timer(result):
        if timer.active():
            timer.cancel()
        return result

    # maybeDeferred: a connector that raises must fail this check, not stop
    # role checking altogether.
    return defer.maybeDeferred(connector.is_server_master).addBoth(cancel_timer)
