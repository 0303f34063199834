"""
Tests for L{hermes_tx.postgres.liveness}, on a L{task.Clock}.  The real case (a
backend stopped with SIGSTOP) is in tests.test_faults.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from hermes_tx.postgres.liveness import LivenessProbe


class LivenessProbeTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.sent = []
        self.dead = []
        self.probe = LivenessProbe(
            self.clock, self.send, lambda: self.dead.append(self.clock.seconds()),
            interval=1.0, timeout=3.0,
        )

    def send(self):
        d = defer.Deferred()
        self.sent.append(d)
        return d

    def test_probes_every_interval_after_each_answer(self):
        self.probe.start()
        self.clock.advance(1)
        self.assertEqual(len(self.sent), 1)
        self.clock.advance(0.5)
        self.sent[0].callback([(1,)])
        self.clock.advance(0.9)
        self.assertEqual(len(self.sent), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.sent), 2)
        self.assertEqual(self.dead, [])

    def test_unanswered_probe_is_death_once(self):
        """
        No answer within the timeout: on_dead is called once, timeout seconds
        after the probe went out, and probing stops.
        """
        self.probe.start()
        self.clock.advance(1)
        self.clock.advance(3)
        self.assertEqual(self.dead, [4.0])
        self.clock.advance(100)
        self.assertEqual((len(self.sent), self.dead), (1, [4.0]))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # A late answer changes nothing.
        self.sent[0].callback([(1,)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failed_probe_stops_quietly(self):
        """
        A probe that fails (the connection died and says so itself) stops the
        probe without declaring death.
        """
        self.probe.start()
        self.clock.advance(1)
        self.sent[0].errback(ConnectionError("gone"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.dead, [])

    def test_stop_cancels_everything(self):
        self.probe.start()
        self.clock.advance(1)
        self.probe.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.dead, [])

    def test_no_probe_while_notifications_flow(self):
        """
        While the activity marker keeps changing, no probe is sent; once it
        stops, probing resumes.
        """
        marker = [0]
        probe = LivenessProbe(self.clock, self.send, lambda: None, interval=1.0, timeout=3.0,
                              activity=lambda: marker[0])
        probe.start()
        for i in range(5):
            marker[0] += 1
            self.clock.advance(1)
        self.assertEqual(self.sent, [])
        self.clock.advance(1)
        self.assertEqual(len(self.sent), 1)
        probe.stop()

    def test_a_probe_cut_short_is_an_answer(self):
        """
        A probe the server cut short (a tiny statement_timeout, SQLSTATE
        57014) came from a server that answers: probing goes on, and a
        later unanswered probe is still death.
        """
        import psycopg2.errors

        self.probe.start()
        self.clock.advance(1)
        self.sent[0].errback(psycopg2.errors.QueryCanceled("canceling statement due to statement timeout"))
        self.clock.advance(1)
        self.assertEqual(len(self.sent), 2)
        self.clock.advance(3)
        self.assertEqual(self.dead, [5.0])
