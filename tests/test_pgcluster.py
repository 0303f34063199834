"""
Tests for L{tests.support.pgcluster}: real primary/standby clusters.

A missing PostgreSQL installation makes these fail (never skip).
"""

import os
import select
import time

import psycopg2
from twisted.trial import reporter, unittest

from tests.support.fixtures import ClassFixtures, PrimaryStandbyFixtures
from tests.support.pgcluster import Cluster, PostgresNotFound, find_bindir
from tests.support.probes import AcceptProbe, wait_accepting
from tests.support.replication import switchover


def _wait_for(predicate, timeout=10.0, interval=0.02):
    """Poll C{predicate()} until it is true; return its last value."""
    deadline = time.monotonic() + timeout
    result = predicate()
    while not result and time.monotonic() < deadline:
        time.sleep(interval)
        result = predicate()
    return result


class _PairMixin(PrimaryStandbyFixtures):
    """Create a primary + streaming standby per test class."""


class ClusterPairTests(_PairMixin, unittest.TestCase):
    """A primary and a streaming standby, shared by the tests."""

    def test_layout(self):
        """Directories live under the system temp dir, socket path is short."""
        for c in (self.primary, self.standby):
            self.assertTrue(os.path.basename(c.base_dir).startswith("hermes-pg-"))
            self.assertFalse(os.path.abspath(c.base_dir).startswith(os.getcwd()))
            self.assertTrue(os.path.isfile(os.path.join(c.data_dir, "PG_VERSION")))
            sock = os.path.join(c.socket_dir, ".s.PGSQL.%d" % (c.port,))
            self.assertTrue(os.path.exists(sock))
            self.assertLess(len(sock.encode()), 108)
            self.assertTrue(c.is_running())
        self.assertNotEqual(self.primary.port, self.standby.port)
        self.assertTrue(os.path.isfile(self.primary.log_path))
        self.assertIn("ready to accept connections", self.primary.read_log())
        self.assertIn("ready to accept read-only connections",
                      self.standby.read_log())

    def test_connection_strings(self):
        """dsn(), dsn_dict() and uri() all reach the primary."""
        p = self.primary
        self.assertEqual(
            p.dsn(application_name="a b"),
            "host=127.0.0.1 port=%d user=postgres dbname=postgres "
            "application_name='a b'" % (p.port,))
        self.assertEqual(p.dsn_dict("template1"), {
            "host": "127.0.0.1", "port": p.port, "user": "postgres",
            "dbname": "template1"})
        self.assertEqual(p.uri(application_name="x y"),
                         "postgresql://postgres@127.0.0.1:%d/postgres"
                         "?application_name=x%%20y" % (p.port,))
        for conn in (psycopg2.connect(p.dsn(application_name="a b")),
                     psycopg2.connect(p.uri(application_name="x y")),
                     psycopg2.connect(**p.dsn_dict(application_name="a b"))):
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT current_setting('port')::int,"
                                " current_setting('application_name')")
                    port, name = cur.fetchone()
                self.assertEqual(port, p.port)
                self.assertIn(name, ("a b", "x y"))
            finally:
                conn.close()

    def test_recovery_roles(self):
        """The primary is not in recovery; the standby is, and streams."""
        self.assertEqual(self.primary.execute("SELECT pg_is_in_recovery()"),
                         [(False,)])
        self.assertEqual(self.standby.execute("SELECT pg_is_in_recovery()"),
                         [(True,)])
        rows = self.standby.execute("SELECT status FROM pg_stat_wal_receiver")
        self.assertEqual(rows, [("streaming",)])

    def test_execute_without_result(self):
        """A statement without a result set returns None."""
        self.assertIsNone(self.primary.execute("SET work_mem = '8MB'"))
        self.assertEqual(self.primary.execute("SELECT %s + 1", (41,)), [(42,)])

    def test_replication(self):
        """A row inserted on the primary shows up on the standby."""
        self.primary.execute(
            "CREATE TABLE IF NOT EXISTS replicated (v text)")
        self.primary.execute("INSERT INTO replicated VALUES (%s)", ("hello",))
        rows = _wait_for(lambda: self.standby.execute(
            "SELECT to_regclass('replicated') IS NOT NULL")[0][0]
            and self.standby.execute("SELECT v FROM replicated"))
        self.assertEqual(rows, [("hello",)])
        self.assertRaises(psycopg2.errors.ReadOnlySqlTransaction,
                          self.standby.execute,
                          "INSERT INTO replicated VALUES ('no')")

    def test_notify(self):
        """notify() reaches a psycopg2 LISTEN connection, channel verbatim."""
        conn = psycopg2.connect(self.primary.dsn())
        self.addCleanup(conn.close)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute('LISTEN "Hermes Chan"')
        self.primary.notify("Hermes Chan", "payload-1")
        deadline = time.monotonic() + 5
        while not conn.notifies and time.monotonic() < deadline:
            select.select([conn], [], [], 0.5)
            conn.poll()
        self.assertEqual([(n.channel, n.payload) for n in conn.notifies],
                         [("Hermes Chan", "payload-1")])

    def test_terminate_backends(self):
        """terminate_backends kills exactly the named connections."""
        victim = psycopg2.connect(self.primary.dsn(application_name="victim"))
        self.addCleanup(victim.close)
        bystander = psycopg2.connect(self.primary.dsn(application_name="bystander"))
        self.addCleanup(bystander.close)
        self.assertEqual(self.primary.backend_pids("victim"),
                         [victim.get_backend_pid()])
        self.assertIn(bystander.get_backend_pid(), self.primary.backend_pids())
        background = self.primary.execute(
            "SELECT pid FROM pg_stat_activity WHERE backend_type <> 'client backend'")
        self.assertTrue(background)  # checkpointer, walsender, ...
        self.assertFalse(set(r[0] for r in background)
                         & set(self.primary.backend_pids()))
        self.assertEqual(self.primary.terminate_backends("victim"), 1)
        self.assertTrue(_wait_for(lambda: not self.primary.backend_pids("victim")))
        with self.assertRaises(psycopg2.OperationalError):
            with victim.cursor() as cur:
                cur.execute("SELECT 1")
        with bystander.cursor() as cur:
            cur.execute("SELECT 1")
            self.assertEqual(cur.fetchone(), (1,))
        self.assertEqual(self.primary.terminate_backends("nobody"), 0)


class PromoteTests(_PairMixin, unittest.TestCase):
    """Promotion and restarts, on a pair of their own."""

    def test_promote(self):
        """promote() takes the standby out of recovery; it becomes writable."""
        self.assertEqual(self.standby.execute("SELECT pg_is_in_recovery()"),
                         [(True,)])
        self.standby.promote()
        self.assertEqual(self.standby.execute("SELECT pg_is_in_recovery()"),
                         [(False,)])
        self.standby.execute("CREATE TABLE promoted (v int)")
        self.standby.execute("INSERT INTO promoted VALUES (1)")
        self.assertEqual(self.standby.execute("SELECT v FROM promoted"), [(1,)])

    def test_restart_and_stop(self):
        """restart() keeps the port; stop()/start() toggle is_running()."""
        p = self.primary
        port = p.port
        before = p.execute("SELECT pg_postmaster_start_time()")[0][0]
        p.restart()
        self.assertEqual(p.port, port)
        after = p.execute("SELECT pg_postmaster_start_time()")[0][0]
        self.assertGreater(after, before)
        p.stop(mode="immediate")
        self.assertFalse(p.is_running())
        self.assertRaises(psycopg2.OperationalError, p.execute, "SELECT 1")
        self.assertRaises(ValueError, p.stop, mode="brutal")
        p.start()
        self.assertTrue(p.is_running())
        self.assertEqual(p.execute("SELECT 1"), [(1,)])


def _roles(a, b):
    """@return: C{(primary, standby)} among the running servers C{a}, C{b}."""
    return (b, a) if a.in_recovery() else (a, b)


def _replicated(primary, standby, value):
    """Insert C{value} on C{primary}; return whether C{standby} shows it."""
    primary.execute("CREATE TABLE IF NOT EXISTS marks (v text)")
    primary.execute("INSERT INTO marks VALUES (%s)", (value,))
    return _wait_for(lambda: standby.execute(
        "SELECT to_regclass('marks') IS NOT NULL")[0][0] and standby.execute(
        "SELECT count(*) FROM marks WHERE v = %s", (value,))[0][0])


class HighAvailabilityTests(_PairMixin, unittest.TestCase):
    """
    What an HA manager does to a pair: switchovers, rewinds, re-clones,
    crashes.  Each test finds which server is the primary first.
    """

    def test_switchover_and_back(self):
        """
        switchover() stops the primary, promotes the standby and rejoins
        the old primary as a streaming standby without a rewind; the same
        works the other way round.
        """
        old, new = _roles(self.primary, self.standby)
        for _ in range(2):
            times = switchover(old, new, pause=0.1)
            self.assertLess(times["stopped"], times["promote"])
            self.assertLessEqual(times["promote"], times["promoted"])
            self.assertLessEqual(times["promoted"], times["rejoined"])
            self.assertFalse(new.in_recovery())
            self.assertTrue(old.in_recovery())
            self.assertIs(old.rewound, False)
            self.assertIn("ready to accept read-only connections", old.read_log())
            self.assertEqual(old.execute("SELECT status FROM pg_stat_wal_receiver"),
                             [("streaming",)])
            self.assertTrue(_replicated(new, old, "after switchover to %d" % new.port))
            old, new = new, old

    def test_rejoin_after_divergence_rewinds(self):
        """
        A primary that went on writing after its standby was promoted has
        diverged: rejoin_as_standby_of() rewinds it, and it then streams
        from the new primary, its own later writes gone.
        """
        old, new = _roles(self.primary, self.standby)
        new.promote()
        old.execute("CREATE TABLE diverged (v int)")
        old.stop("fast")
        old.rejoin_as_standby_of(new)
        self.assertIs(old.rewound, True)
        self.assertTrue(old.in_recovery())
        self.assertEqual(old.execute("SELECT to_regclass('diverged')"), [(None,)])
        self.assertEqual(old.port, old.execute("SELECT current_setting('port')::int")[0][0])
        self.assertTrue(_replicated(new, old, "after rewind"))

    def test_recreate_as_standby(self):
        """
        recreate_as_standby_of() replaces the data directory (a file only
        the old one had is gone), keeps the port, and streams again.
        """
        primary, standby = _roles(self.primary, self.standby)
        self.assertTrue(_replicated(primary, standby, "before re-clone"))
        port = standby.port
        marker = os.path.join(standby.data_dir, "not-in-a-clone")
        with open(marker, "w"):
            pass
        standby.recreate_as_standby_of(primary)
        self.assertEqual(standby.port, port)
        self.assertFalse(os.path.exists(marker))
        self.assertTrue(standby.in_recovery())
        self.assertTrue(_replicated(primary, standby, "after re-clone"))
        self.assertEqual(standby.execute("SELECT count(*) FROM marks WHERE v = %s",
                                         ("before re-clone",)), [(1,)])

    def test_crash_and_recover(self):
        """
        crash() kills the postmaster and all its children at once; start()
        does crash recovery and each server comes back in its role.  (Both
        crash together: PID 1 reaps the dead here only every second or two,
        and start() waits for that.)
        """
        primary, standby = _roles(self.primary, self.standby)
        before = {}
        for cluster in (standby, primary):
            pid = cluster.postmaster_pid()
            children = cluster.execute(
                "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()")
            self.assertTrue(children)
            before[cluster] = (pid, len(cluster.read_log()))
            killed = cluster.crash()
            self.assertLessEqual(killed, time.monotonic())
            self.assertFalse(cluster.is_running())
            self.assertRaises(psycopg2.OperationalError, cluster.execute, "SELECT 1")
            for p in [pid] + [r[0] for r in children]:
                self.assertTrue(_wait_for(lambda: not _running(p)), p)
            self.assertEqual(cluster.postmaster_pid(), pid)  # left behind
        for cluster, in_recovery in ((primary, False), (standby, True)):
            pid, logged = before[cluster]
            cluster.start()
            self.assertNotEqual(cluster.postmaster_pid(), pid)
            self.assertEqual(cluster.in_recovery(), in_recovery)
            self.assertIn("database system was interrupted", cluster.read_log()[logged:])
        standby.wait_streaming(primary)
        self.assertTrue(_replicated(primary, standby, "after crashes"))
        self.assertRaises(RuntimeError, Cluster.crash, _Stopped())


class _Stopped(object):
    """Stands for a cluster with no postmaster.pid."""

    data_dir = "/nonexistent"

    def postmaster_pid(self):
        return None


def _running(pid):
    """Whether C{pid} is a live (not zombie) process."""
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class AcceptProbeTests(unittest.TestCase):
    """AcceptProbe times the first connection a starting server accepts."""

    def test_probe_while_starting(self):
        cluster = Cluster.create_primary()
        self.addCleanup(cluster.destroy)
        cluster.stop("fast")
        probe = AcceptProbe(cluster)
        probe.start()
        time.sleep(0.2)  # refused meanwhile
        self.assertIsNone(probe.accepted_at)
        before = time.monotonic()
        cluster.start()
        after = time.monotonic()
        accepted = probe.wait(10)
        self.assertTrue(before < accepted <= after + 0.1, (before, accepted, after))
        self.assertLessEqual(wait_accepting(cluster, primary=True), time.monotonic())
        cluster.stop("immediate")
        exc = self.assertRaises(RuntimeError, wait_accepting, cluster, timeout=0.2)
        self.assertIn(str(cluster.port), str(exc))


class DestroyTests(unittest.TestCase):
    """destroy() removes everything and can be called twice."""

    def test_destroy_twice(self):
        cluster = Cluster.create_primary()
        self.addCleanup(cluster.destroy)
        self.assertTrue(cluster.is_running())
        cluster.destroy()
        self.assertFalse(os.path.exists(cluster.base_dir))
        self.assertFalse(cluster.is_running())
        cluster.destroy()
        self.assertFalse(os.path.exists(cluster.base_dir))


class FindBindirTests(unittest.TestCase):
    """find_bindir() honours HERMES_PG_BINDIR and fails loudly."""

    def _set_env(self, value):
        old = os.environ.get("HERMES_PG_BINDIR")

        def restore():
            if old is None:
                os.environ.pop("HERMES_PG_BINDIR", None)
            else:
                os.environ["HERMES_PG_BINDIR"] = old
        self.addCleanup(restore)
        os.environ["HERMES_PG_BINDIR"] = value

    def test_empty_dir_raises(self):
        """An HERMES_PG_BINDIR without initdb raises PostgresNotFound."""
        empty = os.path.abspath(self.mktemp())
        os.makedirs(empty)
        self._set_env(empty)
        exc = self.assertRaises(PostgresNotFound, find_bindir)
        self.assertIsInstance(exc, RuntimeError)
        self.assertIn(empty, str(exc))
        self.assertIn("HERMES_PG_BINDIR", str(exc))

    def test_default(self):
        """Without HERMES_PG_BINDIR the installed server is found."""
        self._set_env("")
        bindir = find_bindir()
        self.assertTrue(os.access(os.path.join(bindir, "initdb"), os.X_OK))
        self.assertTrue(os.access(os.path.join(bindir, "pg_ctl"), os.X_OK))


class ClassFixturesTests(unittest.SynchronousTestCase):
    """ClassFixtures makes trial run setUpClass/tearDownClass once."""

    def test_once_per_class(self):
        calls = []

        class Inner(ClassFixtures, unittest.SynchronousTestCase):
            @classmethod
            def setUpClass(cls):
                calls.append("setUpClass")

            @classmethod
            def tearDownClass(cls):
                calls.append("tearDownClass")

            def test_a(self):
                calls.append("a")

            def test_b(self):
                calls.append("b")

        result = reporter.TestResult()
        unittest.TestSuite([Inner("test_a"), Inner("test_b")]).run(result)
        self.assertTrue(result.wasSuccessful())
        self.assertEqual(calls, ["setUpClass", "a", "b", "tearDownClass"])

    def test_setup_error(self):
        """A failing setUpClass errors every test; tearDownClass is skipped."""
        calls = []

        class Inner(ClassFixtures, unittest.SynchronousTestCase):
            @classmethod
            def setUpClass(cls):
                calls.append("setUpClass")
                raise RuntimeError("no cluster")

            @classmethod
            def tearDownClass(cls):
                calls.append("tearDownClass")

            def test_a(self):
                calls.append("a")

            def test_b(self):
                calls.append("b")

        result = reporter.TestResult()
        unittest.TestSuite([Inner("test_a"), Inner("test_b")]).run(result)
        self.assertEqual(len(result.errors), 2)
        self.assertEqual(str(result.errors[0][1].value), "no cluster")
        self.assertEqual(calls, ["setUpClass"])
