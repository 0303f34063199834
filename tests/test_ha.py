"""
Issue 8, items 2-5, on real primary/standby pairs (item 1, the multi-host
switchovers through C{twistd hermes}, is in L{tests.test_ha_twistd}):

  2. a multi-host DSN without target_session_attrs, the primary crashed
     (SIGKILL) and back 3.5 s later: the Client comes back to it;
  3. a watched standby whose data directory is deleted and cloned again,
     then promoted: the watch still notices;
  4. failover-file events while the watched server is down: no burst of
     failed role checks, and the Client is back soon after the server;
  5. back-to-back pg_terminate_backend of the listener: delivery resumes
     each time, and no slower at the tenth kill than at the first.

Every scenario checks (L{tests.support.ha}) that delivery resumes on the
primary with exact payloads, one start or resync per gap, nothing processed
off a primary, the Client still running and a clean log.  Timeouts are
generous: speed goals are measured by bench/failover.py and
bench/resilience.py, not asserted here.
"""

import os
import statistics
import sys
import time

from twisted.internet import defer, threads
from twisted.logger import formatEvent
from twisted.trial import unittest

from tests.support.faults import SECRET
from tests.support.fixtures import PrimaryStandbyFixtures
from tests.support.ha import HAHelpers, multi_host_dsn
from tests.support.logcheck import hermes_times, max_per_second
from tests.support.shared import capture_log, shared_primary, sleep, wait_until


def report(what, value):
    sys.stderr.write(f"\n[test_ha] {what}: {value}\n")


def hermes_lines(log, start=0):
    """@return: the formatted hermes_tx log lines from C{log[start:]}."""
    return [formatEvent(e) for e in log[start:]
            if e.get("log_namespace", "").startswith("hermes_tx")]


class CrashedPrimaryTests(PrimaryStandbyFixtures, HAHelpers, unittest.TestCase):
    """Item 2: a multi-host DSN must not park the Client on the standby."""

    @defer.inlineCallbacks
    def test_back_to_the_restarted_primary(self):
        """
        DSN: primary first, then the standby, no target_session_attrs.  The
        primary's postmaster is SIGKILLed and started again (as primary)
        3.5 s later: the Client delivers on it again, and never processes
        anything while on the standby.
        """
        log = capture_log(self)
        primary, standby = self.primary, self.standby
        client, collector, app = self.start_ha_client(multi_host_dsn(primary, standby), "crash")
        yield self.deliver_again(primary, client, collector, 0, "first", first="start")
        index = len(collector.events)
        yield threads.deferToThread(primary.crash)
        yield sleep(3.5)
        yield threads.deferToThread(primary.start)
        accepting = time.monotonic()
        resumed = yield self.deliver_again(primary, client, collector, index, "crash")
        report("crashed primary accepting -> delivering (s)", f"{resumed - accepting:.3f}")
        self.assert_on_primary(client, collector)
        self.assertEqual(standby.backend_pids(app), [])
        self.assertNotIn("cannot execute LISTEN", standby.read_log())
        self.assert_ha_log(log)


class WatchedDirectoryTests(PrimaryStandbyFixtures, HAHelpers, unittest.TestCase):
    """
    Items 3 and 4: a Client watching its server's data directory
    (C{watch_path}).  Item 3 uses the standby, item 4 the primary.
    """

    def setUp(self):
        super().setUp()
        self.addCleanup(self._primary_back)

    def _primary_back(self):
        """
        Item 4 stops the primary, which item 3 clones: a failure half-way
        must not take the other test with it.
        """
        if not self.primary.is_running():
            for name in ("standby.signal", "promote"):
                if os.path.exists(os.path.join(self.primary.data_dir, name)):
                    os.remove(os.path.join(self.primary.data_dir, name))
            self.primary.start()

    @defer.inlineCallbacks
    def test_recloned_standby_promotion(self):
        """
        The watched standby's data directory is deleted and cloned again
        (as C{patronictl reinit} does), then the standby is promoted: a
        failover-file event is logged after the promotion (the watch
        followed the new directory) and the Client starts there.  Periodic
        role checks are 30 s apart, so they cannot be what noticed.
        """
        log = capture_log(self)
        standby = self.standby
        client, collector, app = self.start_ha_client(
            standby.dsn(password=SECRET), "reclone", watch_path=standby.data_dir,
            role_check_interval=30)
        yield wait_until(lambda: client.role == "standby", timeout=10, what="role standby")
        yield threads.deferToThread(standby.recreate_as_standby_of, self.primary)
        yield wait_until(lambda: client.role == "standby", timeout=15,
                         what="role standby after the re-clone")
        # Failover-file lines are logged at most once a second, and the
        # re-clone's own events (standby.signal deleted with the old
        # directory) may be less than a second old on a fast machine.
        yield sleep(1.1)
        self.assertEqual(collector.events, [])
        promoting = len(log)
        promoted = time.monotonic()
        yield threads.deferToThread(standby.promote)
        started = yield self.deliver_again(standby, client, collector, 0, "reclone",
                                           timeout=10, first="start")
        report("re-cloned standby: promote -> delivering (s)", f"{started - promoted:.3f}")
        lines = hermes_lines(log, promoting)
        self.assertTrue([line for line in lines if line.startswith("failover file ")], lines)
        self.assert_on_primary(client, collector)
        self.assert_ha_log(log)

    @defer.inlineCallbacks
    def test_file_events_while_down(self):
        """
        The watched primary is stopped; standby.signal and promote are
        created and deleted in its data directory three times; 1.5 s later
        it starts again as primary.  No burst of failed role checks, and
        the Client delivers again soon (a backoff inflated by the events
        would wait 32 s).
        """
        log = capture_log(self)
        primary = self.primary
        client, collector, app = self.start_ha_client(
            primary.dsn(password=SECRET), "events-down", watch_path=primary.data_dir)
        yield self.deliver_again(primary, client, collector, 0, "first", first="start")
        index = len(collector.events)
        yield threads.deferToThread(primary.stop, "fast")
        yield sleep(0.3)
        yield threads.deferToThread(self._touch_failover_files, primary.data_dir)
        # Longer than a second: a check the events started must not be
        # what finds the server back.
        yield sleep(1.5)
        failed = [line for line in hermes_lines(log) if line.startswith("role check failed")]
        report("role check failed lines while down (busiest second)",
               f"{len(failed)} ({max_per_second(hermes_times(log))})")
        yield threads.deferToThread(primary.start)
        accepting = time.monotonic()
        resumed = yield self.deliver_again(primary, client, collector, index, "down",
                                           timeout=10)
        report("file events while down: accepting -> delivering (s)",
               f"{resumed - accepting:.3f}")
        self.assert_on_primary(client, collector)
        self.assert_ha_log(log)

    @staticmethod
    def _touch_failover_files(data_dir, rounds=3, pause=0.05):
        """Create and delete standby.signal and promote, C{rounds} times."""
        for _ in range(rounds):
            for name in ("standby.signal", "promote"):
                path = os.path.join(data_dir, name)
                with open(path, "w"):
                    pass
                time.sleep(pause)
                os.remove(path)
                time.sleep(pause)


class BackToBackKillTests(HAHelpers, unittest.TestCase):
    """Item 5: a connection that was LISTENing is a success."""

    KILLS = 12

    @defer.inlineCallbacks
    def test_kills_as_soon_as_delivery_resumes(self):
        """
        The listener's backend is terminated as soon as delivery resumed,
        12 times: each time it resumes within 3 s, and the last kills are
        not answered much more slowly than the first (with a reconnect
        count that resets only after 10 s of a stable connection, the
        tenth waits ~15 s).
        """
        log = capture_log(self)
        cluster = shared_primary()
        client, collector, app = self.start_ha_client(cluster.dsn(password=SECRET), "kills")
        yield self.deliver_again(cluster, client, collector, 0, "first", first="start")
        delays = []
        for kill in range(self.KILLS):
            index = len(collector.events)
            (pid,) = cluster.backend_pids(app)
            killed = time.monotonic()
            self.assertEqual(cluster.terminate_backends(app), 1)
            # Probes sent once the backend is gone cannot reach it.
            yield wait_until(lambda: pid not in cluster.backend_pids(), timeout=5,
                             what="the killed backend gone")
            resumed = yield self.deliver_again(cluster, client, collector, index,
                                               f"kill {kill}", timeout=3, exact=())
            delays.append(resumed - killed)
        report("kill -> delivering (s)", " ".join(f"{d:.3f}" for d in delays))
        report("median / max (s)", f"{statistics.median(delays):.3f} / {max(delays):.3f}")
        self.assertLess(max(delays[-3:]), 1.0, delays)
        yield self.deliver_again(cluster, client, collector, len(collector.events), "after",
                                 first=None)
        self.assert_on_primary(client, collector)
        self.assert_ha_log(log)
