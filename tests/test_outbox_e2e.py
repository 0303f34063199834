"""
The durable outbox end to end: real C{twistd hermes --outbox} processes on
a real server, with processes SIGKILLed and replaced, every hermes backend
terminated and the server restarted while changes are written.

What is delivered is judged by L{tests.support.deliveries.judge}: every
change whose transaction committed is delivered at least once and, per
key, in commit order (a duplicate may only repeat the change delivered
just before it), and nothing is delivered that did not commit.  Changes
are numbered per key by the writer (L{tests.support.fleet.Writer}: a
counter row per key, updated in the change's transaction); the server's
own tables say what committed, including transactions whose COMMIT the
writer never heard back about.

Failover, capture and sinks end to end: L{tests.test_outbox_e2e_more}.
"""

import os
import random
import time

import psycopg2

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.trial import unittest

from tests.support.deliveries import judge, read_lines
from tests.support.fixtures import ClassFixtures
from tests.support.fleet import Fleet, Writer, committed_on, prefill, prepare_writer_tables
from tests.support.outbox import OutboxDatabase, drop_database, make_database
from tests.support.shared import sleep, wait_until

log = Logger()

#: options every instance gets: claims come back 2 s after their consumer
#: died, and polling stays a fallback
FAST = ["--visibility-timeout", "2", "--poll-interval", "0.5", "--role-check-interval", "0.2"]


class _EndToEnd:
    """
    Helpers for a test class with C{self.dsn}, an outbox installed there.
    """

    keys = [f"key-{i}" for i in range(50)]

    def fleet(self, dsn=None, extra=FAST, **kwargs):
        workdir = self.mktemp()
        os.makedirs(workdir)
        fleet = Fleet(dsn or self.dsn, ["t"], workdir, extra=extra, **kwargs)
        self.addCleanup(fleet.kill_all)
        return fleet

    @defer.inlineCallbacks
    def started_fleet(self, count, per_key, dsn=None, primary_dsn=None, **kwargs):
        """
        Make the writer's tables with C{per_key} changes of each key
        already committed (on C{primary_dsn}, else C{dsn}), start C{count}
        instances (L{fleet}'s C{kwargs}) and wait until they consume.

        @return: a Deferred firing with the L{Fleet}.
        """
        setup = primary_dsn or dsn or self.dsn
        prepare_writer_tables(setup, self.keys)
        prefill(setup, self.keys, per_key)
        fleet = self.fleet(dsn=dsn, **kwargs)
        for _ in range(count):
            fleet.start()
        yield wait_until(fleet.consuming, timeout=30, what=f"{count} instances consuming")
        return fleet

    def writer(self, dsn=None, **kwargs):
        writer = Writer(dsn or self.dsn, self.keys, **kwargs)
        self.addCleanup(writer.stop)
        return writer.start()

    def outbox_state(self, dsn=None):
        """
        @return: C{(rows, claimed, claims alive, keys, most attempts, rows
            waiting for a retry)} of the outbox.
        """
        conn = psycopg2.connect(dsn or self.dsn)
        try:
            cur = conn.cursor()
            cur.execute(
                "SELECT count(*), count(claim_token), count(*) FILTER (WHERE claimed_until > now()),"
                " count(DISTINCT key), max(attempts), count(*) FILTER (WHERE available_at > now())"
                " FROM hermes.outbox"
            )
            return cur.fetchone()
        finally:
            conn.close()

    @defer.inlineCallbacks
    def finish(self, fleet, writer, dsn=None, timeout=60):
        """
        Stop the writer, wait until the outbox is empty, stop the fleet
        cleanly and judge what was delivered against what the server says
        committed.

        @return: a Deferred firing with the L{tests.support.deliveries.Verdict}.
        """
        yield threads.deferToThread(writer.stop)
        try:
            yield wait_until(lambda: self.outbox_state(dsn)[0] == 0, timeout=timeout, interval=0.2,
                             what="an empty outbox")
        except AssertionError as e:
            raise AssertionError(
                f"{e}: (rows, claimed, alive, keys, attempts, waiting) = {self.outbox_state(dsn)};"
                f" {len(read_lines(fleet.output))} lines; writer: {len(writer.acknowledged)} committed,"
                f" {writer.unknown} unknown, {writer.refused} refused; logs:\n"
                + "\n".join(i.log()[-1500:] for i in fleet.running())
            ) from None
        # A twistd still starting has no SIGTERM handler yet (it would die
        # of the signal): stop only instances that are up.
        yield wait_until(fleet.consuming, timeout=30, what="every instance consuming")
        fleet.stop()
        yield wait_until(fleet.stopped, timeout=30, what="every instance stopped")
        counts, tokens = committed_on(dsn or self.dsn)
        lines = read_lines(fleet.output)
        verdict = judge([(d["key"], d["n"], d["w"]) for d in lines], counts, tokens)
        log.info("{test}: {summary}", test=self.id(), summary=verdict.summary())
        self.assertEqual(verdict.missing, [], verdict.summary())
        self.assertEqual(verdict.disorder, [], verdict.summary())
        self.assertEqual(verdict.phantoms, [], verdict.summary())
        # Every change whose COMMIT the writer saw is one of those.
        for key, n, w, _ in writer.acknowledged:
            self.assertEqual(tokens.get((key, n)), w, f"acknowledged commit {key} #{n} is not on the server")
        self.assertEqual(fleet.unclean(), [])
        return verdict


class KillTests(_EndToEnd, OutboxDatabase, unittest.TestCase):
    @defer.inlineCallbacks
    def test_at_least_once_in_order_across_sigkill(self):
        """
        Three instances share a backlog and a stream of writes from two
        threads over 50 keys; every 2 s (counted from when the last one
        started consumes) one is SIGKILLed in the middle of its batches
        (each change takes 2 ms) and a new one started.  Every committed change is delivered, per key in commit
        order; the dead instances' claims come back to the others.
        """
        fleet = yield self.started_fleet(3, 40, execute_delay=0.002)
        writer = self.writer(rate=250, threads=2)
        rng = random.Random(10)
        for _ in range(5):
            yield sleep(2.0)
            fleet.kill_one(rng)
            fleet.start()
            # Two seconds of work for the new one, counted from when it
            # consumes (a busy machine starts a process slowly).
            yield wait_until(fleet.consuming, timeout=30, what="the new instance consuming")
        verdict = yield self.finish(fleet, writer)
        self.assertEqual(sum(i.killed for i in fleet.instances), 5)
        pids = {d["pid"] for d in read_lines(fleet.output)}
        self.assertGreaterEqual(len(pids), 6, "the work was not shared by the instances")
        # A SIGKILL in the middle of a batch may deliver its last changes
        # again (at least once), never many.
        self.assertLessEqual(verdict.duplicates, 0.05 * verdict.expected, verdict.summary())
        self.assertEqual(self.query("SELECT count(*) FROM hermes.dead_letters"), [(0,)])


class ServerFaultTests(_EndToEnd, ClassFixtures, unittest.TestCase):
    """
    On a server of its own (it is restarted).
    """

    @classmethod
    def setUpClass(cls):
        import psycopg2

        from hermes_tx.outbox.schema import install
        from tests.support.pgcluster import Cluster

        cls.cluster = Cluster.create_primary()
        try:
            cls.dbname = make_database(cls.cluster, "faults")
            cls.dsn = cls.cluster.dsn(cls.dbname)
            conn = psycopg2.connect(cls.dsn)
            try:
                install(conn)
            finally:
                conn.close()
        except BaseException:
            cls.cluster.destroy()
            raise

    @classmethod
    def tearDownClass(cls):
        drop_database(cls.cluster, cls.dbname)
        cls.cluster.destroy()

    def terminate_hermes(self):
        """
        @return: how many hermes backends of the test's database were
            terminated.
        """
        rows = self.cluster.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name LIKE 'hermes%%' AND datname = %s AND pid <> pg_backend_pid()",
            (self.dbname,),
        )
        return sum(1 for (ok,) in rows if ok)

    @defer.inlineCallbacks
    def test_backends_terminated_and_server_restarted(self):
        """
        Two instances deliver while two writer threads write; every hermes
        backend is terminated, later the server restarts (fast shutdown):
        nothing committed is lost, per key in commit order.
        """
        fleet = yield self.started_fleet(2, 20, execute_delay=0.002)
        writer = self.writer(rate=200, threads=2)
        yield sleep(1.5)
        self.assertGreaterEqual(self.terminate_hermes(), 2)
        yield sleep(2.0)
        yield threads.deferToThread(self.cluster.restart, "fast")
        restarted = time.time()
        yield wait_until(lambda: any(t > restarted for _, _, _, t in writer.acknowledged), timeout=20,
                         what="commits after the restart")
        yield sleep(2.0)
        yield self.finish(fleet, writer)
        self.assertTrue(any(d["t"] > restarted for d in read_lines(fleet.output)),
                        "nothing delivered after the restart")
        self.assertGreater(writer.unknown, 0, "the writer did not notice the restart")
