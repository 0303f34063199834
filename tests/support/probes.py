# -*- test-case-name: tests.test_pgcluster -*-
"""
When does a server accept connections again?  L{AcceptProbe} polls it from
a thread (so whoever restarts it, and the reactor, carry on) and records
the moment its first connection succeeded.
"""

import threading
import time

import psycopg2


def wait_accepting(cluster, timeout=60.0, interval=0.005, primary=False):
    """
    Try to connect to C{cluster} (over TCP, as clients do) every
    C{interval} seconds until it works.

    @param primary: also require C{pg_is_in_recovery()} to be false.
    @return: C{time.monotonic()} when the first connection succeeded.
    @raise RuntimeError: none succeeded within C{timeout} seconds.
    """
    dsn = cluster.dsn(application_name="hermes-accept-probe", connect_timeout=2)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            conn = psycopg2.connect(dsn)
        except psycopg2.Error as e:
            last = e
        else:
            at = time.monotonic()
            try:
                if not primary:
                    return at
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_is_in_recovery()")
                    if not cur.fetchone()[0]:
                        return at
            finally:
                conn.close()
        time.sleep(interval)
    raise RuntimeError("port %d not accepting connections within %ss (last error: %s)"
                       % (cluster.port, timeout, str(last).strip()))


class AcceptProbe(threading.Thread):
    """
    Runs L{wait_accepting} in a daemon thread: start it before starting the
    server, then L{wait} for the time it first accepted a connection.

    @ivar accepted_at: C{time.monotonic()} of that first connection, or
        C{None}.
    @ivar error: the exception L{wait_accepting} raised, or C{None}.
    """

    def __init__(self, cluster, timeout=60.0, interval=0.005, primary=False):
        super().__init__(daemon=True, name="accept-probe-%d" % (cluster.port,))
        self._args = (cluster, timeout, interval, primary)
        self.accepted_at = None
        self.error = None

    def run(self):
        try:
            self.accepted_at = wait_accepting(*self._args)
        except Exception as e:
            self.error = e

    def wait(self, timeout=None):
        """
        Block until the probe ends (at most C{timeout} seconds more).

        @return: L{accepted_at}.
        @raise RuntimeError: the server did not accept connections.
        """
        self.join(timeout)
        if self.error is not None:
            raise self.error
        if self.accepted_at is None:
            raise RuntimeError("accept probe still running")
        return self.accepted_at
