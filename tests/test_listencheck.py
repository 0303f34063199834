"""
L{hermes_tx.sources.listencheck} in memory: the L{ListenCheck} state machine
with a fake sender and a L{task.Clock} (every state and timer), and its
wiring into a listener's run on fake connections (tests/support/fakes):
the private channel is LISTENed, its notifications never reach the queue,
back-pressure pauses the check, a deaf verdict makes the Client not ready.
Against real servers and pgbouncer: tests.test_listencheck_pg.
"""

from psycopg2.extensions import Notify
from twisted.internet import defer, task
from twisted.logger import LogLevel, formatEvent
from twisted.trial import unittest

from hermes_tx.client import Client
from hermes_tx.listeners import PostgresNotificationListener
from hermes_tx.postgres.channels import MAX_CHANNEL_BYTES
from hermes_tx.runtime.queue import EventQueue
from hermes_tx.sources.listencheck import (
    CHANNEL_PREFIX,
    ListenCheck,
    private_channel,
    sift,
)
from hermes_tx.status.metrics import ClientCollector
from hermes_tx.status.readiness import readiness
from tests.support.fakes import FakeConnection, FakeListenConnector, FakeRoleConnector
from tests.support.shared import Collector, capture_log

CHANNEL = CHANNEL_PREFIX + "0123456789abcdef"


class FakeSender:
    """
    A probe sender whose every send waits for the test: C{sends} holds
    C{(channel, payload, deferred)}; C{cancelled} counts cancellations.
    """

    def __init__(self):
        self.sends = []
        self.cancelled = 0

    def __call__(self, channel, payload):
        d = defer.Deferred(lambda _: self._cancel())
        self.sends.append((channel, payload, d))
        return d

    def _cancel(self):
        self.cancelled += 1

    @property
    def last(self):
        return self.sends[-1]

    def commit(self):
        """The last probe's NOTIFY is committed."""
        self.last[2].callback(None)

    def fail(self, error):
        self.last[2].errback(error)


class CheckTests(unittest.TestCase):
    """
    The state machine: a fake sender, a fake clock, recorded verdicts.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.sender = FakeSender()
        self.verdicts = []
        self.check = ListenCheck(
            self.clock, self.sender, CHANNEL,
            on_heard=lambda: self.verdicts.append("heard"),
            on_deaf=lambda reason: self.verdicts.append(("deaf", reason)),
            on_failed=lambda reason: self.verdicts.append(("failed", reason)),
            interval=30.0, timeout=5.0,
        )

    def come_back(self, index=-1):
        self.check.received(self.sender.sends[index][1])

    def assertNoTimers(self):
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_heard(self):
        """
        start sends one probe on the private channel; its commit then its
        notification make the verdict "heard"; the next probe comes after
        the interval.
        """
        self.assertEqual(self.check.state, "stopped")
        self.check.start()
        self.assertEqual(self.check.state, "sending")
        self.assertEqual(len(self.sender.sends), 1)
        channel, payload, _ = self.sender.last
        self.assertEqual(channel, CHANNEL)
        self.sender.commit()
        self.assertEqual(self.check.state, "waiting")
        self.clock.advance(4.9)
        self.come_back()
        self.assertEqual(self.check.state, "heard")
        self.assertEqual(self.verdicts, ["heard"])
        self.clock.advance(29.9)
        self.assertEqual(len(self.sender.sends), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.sender.sends), 2)
        self.assertNotEqual(self.sender.last[1], payload)  # a payload per probe
        self.assertEqual(self.check.state, "sending")

    def test_back_before_its_commit_is_acknowledged(self):
        """
        The notification may arrive before the probe's connection hears
        its commit: heard; the probe's connection is let go.
        """
        self.check.start()
        self.come_back()
        self.assertEqual(self.check.state, "heard")
        self.assertEqual(self.verdicts, ["heard"])
        self.assertEqual(self.sender.cancelled, 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the interval only

    def test_deaf(self):
        """
        Committed, and no notification within the timeout: deaf, with a
        reason; the next probe after the interval; a later one that comes
        back makes it heard again.
        """
        self.check.start()
        self.clock.advance(3.0)
        self.sender.commit()
        self.clock.advance(4.9)
        self.assertEqual(self.verdicts, [])
        self.clock.advance(0.1)  # 5 s after the commit
        self.assertEqual(self.check.state, "deaf")
        self.assertEqual(self.verdicts, [(
            "deaf", "a probe notification sent from another connection did not come back "
                    "within 5 s")])
        self.clock.advance(30.0)
        self.assertEqual(len(self.sender.sends), 2)
        self.sender.commit()
        self.clock.advance(5.0)
        self.assertEqual([v[0] for v in self.verdicts], ["deaf", "deaf"])
        self.clock.advance(30.0)
        self.sender.commit()
        self.come_back()
        self.assertEqual(self.verdicts[-1], "heard")

    def test_late_notification_still_hears(self):
        """
        A probe's notification that comes back after its timeout (and one
        of a recent earlier probe) is heard, late.
        """
        self.check.start()
        self.sender.commit()
        self.clock.advance(5.0)
        self.clock.advance(30.0)  # a second probe is being sent
        self.come_back(0)
        self.assertEqual(self.check.state, "heard")
        self.assertEqual(self.verdicts[-1], "heard")
        self.assertEqual(self.sender.cancelled, 1)

    def test_send_fails(self):
        """
        A probe that cannot be sent is no verdict on the LISTEN: "failed"
        with what it was; the next probe after the interval.
        """
        self.check.start()
        self.sender.fail(ConnectionRefusedError("Connection refused"))
        self.assertEqual(self.check.state, "unproven")
        self.assertEqual(self.verdicts, [("failed", "ConnectionRefusedError: Connection refused")])
        self.clock.advance(30.0)
        self.assertEqual(self.check.state, "sending")

    def test_send_raises(self):
        """A sender that raises instead of failing its Deferred is a failed probe."""
        def send(channel, payload):
            raise ValueError("no\nsecond line")

        check = ListenCheck(self.clock, send, CHANNEL, lambda: None, lambda r: None,
                            lambda r: self.verdicts.append(r))
        check.start()
        self.assertEqual(self.verdicts, ["ValueError: no"])
        self.assertEqual(check.state, "unproven")

    def test_not_sent_in_time(self):
        """
        A probe not committed within the timeout is abandoned (its
        Deferred cancelled) and is a failure, not deafness.
        """
        self.check.start()
        self.clock.advance(5.0)
        self.assertEqual(self.check.state, "unproven")
        self.assertEqual(self.verdicts, [("failed", "the probe was not sent within 5 s")])
        self.assertEqual(self.sender.cancelled, 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_never_two_probes_in_flight(self):
        """start while a probe is in flight sends none."""
        self.check.start()
        self.check.start()
        self.sender.commit()
        self.check.start()
        self.assertEqual(len(self.sender.sends), 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the timeout

    def test_start_again_probes_now(self):
        """start after a verdict (a new LISTEN) probes at once."""
        self.check.start()
        self.come_back()
        self.check.start()
        self.assertEqual(len(self.sender.sends), 2)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_others_postpone_probes_once_heard(self):
        """
        Once heard, notifications from other backends postpone the next
        probe by an interval; a quiet interval brings it.
        """
        self.check.start()
        self.come_back()
        self.clock.advance(10.0)
        self.check.others_heard()
        self.clock.advance(20.0)
        self.assertEqual(len(self.sender.sends), 1)
        self.assertEqual(self.check.state, "heard")
        self.check.others_heard()
        self.clock.advance(30.0)
        self.assertEqual(len(self.sender.sends), 1)
        self.clock.advance(30.0)
        self.assertEqual(len(self.sender.sends), 2)

    def test_others_prove_nothing_before_a_probe_did(self):
        """
        Through a transaction-pooling proxy some notifications slip
        through: while unproven or deaf they change nothing and postpone
        nothing.
        """
        self.check.start()
        self.check.others_heard()
        self.sender.commit()
        self.check.others_heard()
        self.clock.advance(5.0)
        self.assertEqual(self.check.state, "deaf")
        self.check.others_heard()
        self.clock.advance(30.0)
        self.assertEqual(len(self.sender.sends), 2)
        self.sender.fail(ValueError("x"))
        self.check.others_heard()
        self.clock.advance(30.0)
        self.assertEqual(len(self.sender.sends), 3)
        self.assertNotIn("heard", self.verdicts)

    def test_strangers_are_ignored(self):
        """
        Someone else's NOTIFY on the private channel is no probe of ours:
        counted, nothing more.
        """
        self.check.start()
        self.check.received("forged")
        self.assertEqual(self.check.state, "sending")
        self.assertEqual(self.check.strangers, 1)
        self.assertEqual(self.verdicts, [])

    def test_stop_in_every_state(self):
        """
        stop leaves no timer and abandons a probe in flight; its late
        result and a late notification change nothing.
        """
        def to_sending():
            self.check.start()

        def to_waiting():
            self.check.start()
            self.sender.commit()

        def to_heard():
            self.check.start()
            self.come_back()

        def to_deaf():
            to_waiting()
            self.clock.advance(5.0)

        def to_unproven():
            self.check.start()
            self.sender.fail(ValueError("x"))

        def to_paused():
            self.check.start()
            self.check.pause()

        for reach, state in [(to_sending, "sending"), (to_waiting, "waiting"),
                             (to_heard, "heard"), (to_deaf, "deaf"),
                             (to_unproven, "unproven"), (to_paused, "paused")]:
            self.setUp()
            reach()
            self.assertEqual(self.check.state, state)
            verdicts = list(self.verdicts)
            self.check.stop()
            self.assertEqual(self.check.state, "stopped")
            self.assertNoTimers()
            _, payload, d = self.sender.last
            if not d.called:
                self.assertEqual(self.sender.cancelled, 1, state)
                d.callback(None)  # a sender that ignores cancel() answers late
            self.check.received(payload)
            self.clock.advance(100.0)
            self.assertEqual(self.verdicts, verdicts, state)
            self.assertEqual(len(self.sender.sends), 1, state)
            self.check.stop()  # twice is fine

    def test_abandoned_probe_fails_quietly(self):
        """
        A probe abandoned at its timeout fails with CancelledError, which the
        check consumes: no second verdict, no unhandled error.
        """
        sends = []

        def send(channel, payload):
            d = defer.Deferred()  # cancel() fails it with CancelledError
            sends.append(d)
            return d

        check = ListenCheck(self.clock, send, CHANNEL, lambda: None, lambda r: None,
                            lambda r: self.verdicts.append(r))
        check.start()
        self.clock.advance(5.0)
        self.assertEqual(self.verdicts, ["the probe was not sent within 5 s"])
        self.assertTrue(sends[0].called)
        self.assertIsNone(self.successResultOf(sends[0]))  # consumed
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_pause_and_resume(self):
        """
        Back-pressure: a probe in flight is abandoned (no verdict: its
        notification could not be read), nothing runs while paused, and
        the next probe comes one interval after resume.
        """
        self.check.start()
        self.sender.commit()
        self.check.pause()
        self.assertEqual(self.check.state, "paused")
        self.assertNoTimers()
        self.clock.advance(100.0)
        self.check.resume()
        self.assertEqual(self.check.state, "unproven")
        self.clock.advance(29.9)
        self.assertEqual(len(self.sender.sends), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.sender.sends), 2)
        self.assertEqual(self.verdicts, [])

    def test_pause_in_every_resting_state(self):
        for reach in ("heard", "deaf", "unproven"):
            self.setUp()
            self.check.start()
            if reach == "heard":
                self.come_back()
            elif reach == "deaf":
                self.sender.commit()
                self.clock.advance(5.0)
            else:
                self.sender.fail(ValueError("x"))
            self.check.pause()
            self.assertNoTimers()
            self.check.start()  # nothing while paused
            self.assertEqual(len(self.sender.sends), 1)
            self.check.resume()
            self.clock.advance(30.0)
            self.assertEqual(len(self.sender.sends), 2, reach)

    def test_a_verdict_that_stops_the_check(self):
        """A callback may stop the check (the run ends): no timer is left."""
        check = ListenCheck(self.clock, self.sender, CHANNEL, lambda: None,
                            lambda reason: check.stop(), lambda reason: None)
        check.start()
        self.sender.commit()
        self.clock.advance(5.0)
        self.assertEqual(check.state, "stopped")
        self.assertNoTimers()

    def test_a_callback_that_raises_is_logged(self):
        def broken():
            raise RuntimeError("bug")

        check = ListenCheck(self.clock, self.sender, CHANNEL, broken, lambda r: None,
                            lambda r: None)
        check.start()
        check.received(self.sender.last[1])
        self.assertEqual(check.state, "heard")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(30.0)
        self.assertEqual(check.state, "sending")


class HelperTests(unittest.TestCase):
    def test_private_channel(self):
        """
        A random name under the prefix, a valid channel name, never one of
        the names to avoid.
        """
        names = {private_channel() for _ in range(100)}
        self.assertEqual(len(names), 100)
        for name in names:
            self.assertTrue(name.startswith(CHANNEL_PREFIX))
            self.assertLessEqual(len(name.encode("utf-8")), MAX_CHANNEL_BYTES)

    def test_private_channel_avoids(self):
        import hermes_tx.sources.listencheck as module

        tokens = iter(["aaaa", "bbbb"])
        self.patch(module.secrets, "token_hex", lambda n: next(tokens))
        self.assertEqual(private_channel([CHANNEL_PREFIX + "aaaa"]), CHANNEL_PREFIX + "bbbb")

    def test_sift(self):
        batch = [Notify(1, "a", "1"), Notify(2, CHANNEL, "p"), Notify(3, "a", "2"),
                 Notify(4, CHANNEL, "q")]
        others, payloads = sift(batch, CHANNEL)
        self.assertEqual([n.payload for n in others], ["1", "2"])
        self.assertEqual(payloads, ["p", "q"])


class _PidConnection(FakeConnection):
    def get_backend_pid(self):
        return 41  # FakeConnection.deliver sends as pid 42


class _Connector(FakeListenConnector):
    def _open(self):
        conn = _PidConnection(host=self.pinned, in_recovery=self.in_recovery)
        self.connections.append(conn)
        self.connection = conn
        return conn


class ListenerWiringTests(unittest.TestCase):
    """
    The check inside a listener's runs, on fake connections: the sender
    delivers the probe to the current connection (heard) or not (deaf).
    """

    def setUp(self):
        self.clock = task.Clock()
        self.listen = _Connector()
        self.hears = True
        self.sent = []
        self.log = capture_log(self)

    def send(self, channel, payload):
        self.sent.append(payload)
        if self.hears:
            conn = self.listen.current
            conn.notify_sink([Notify(7, channel, payload)])
        return defer.succeed(None)

    def make(self, **kwargs):
        listener = PostgresNotificationListener(
            self.listen, "c", clock=self.clock, liveness_timeout=None, listen_probe=self.send,
            **kwargs)
        listener.startService()
        self.addCleanup(lambda: listener.stopService() if listener.running else None)
        return listener

    def lines(self, level):
        return [formatEvent(e) for e in self.log
                if e.get("log_namespace", "").startswith("hermes_tx")
                and e.get("log_level") == level]

    def test_private_channel_is_listened_and_kept_from_the_queue(self):
        listener = self.make()
        self.assertTrue(listener.check_channel.startswith(CHANNEL_PREFIX))
        listen_query = [q for q in self.listen.current.queries if "LISTEN" in q]
        self.assertEqual(len(listen_query), 1)
        self.assertIn(listener.check_channel, listen_query[0])
        self.assertEqual(len(self.sent), 1)
        self.assertEqual(listener.listen_probes["heard"], 1)
        self.assertTrue(listener.hears)
        # a forged probe and a mixed batch: only the user's reach the queue
        self.listen.current.notify_sink([
            Notify(9, "c", "1"), Notify(9, listener.check_channel, "forged"), Notify(9, "c", "2")])
        self.listen.current.deliver("3")
        self.assertEqual([(e.kind, e.payload) for e in listener.notif_queue.pending],
                         [("start", None), ("notification", "1"), ("notification", "2"),
                          ("notification", "3")])
        self.assertEqual(dict(listener.received), {"c": 3})

    def test_deaf_is_one_line_and_not_ready(self):
        """
        A probe that does not come back: one warning line naming the usual
        cause, the Client not ready, hermes_listening 0; later verdicts
        alike add no line; a probe heard again makes it ready.
        """
        self.hears = False
        client = Client("host=db", clock=self.clock, connector=FakeRoleConnector("primary"),
                        role_check_interval=1.0)
        listener = PostgresNotificationListener(
            self.listen, "c", clock=self.clock, liveness_timeout=None, listen_probe=self.send)
        client.add_listener(listener)
        client.add_processor(Collector())
        client.startService()
        self.addCleanup(client.stopService)
        self.assertEqual(readiness(client)[0], True)  # no verdict yet
        self.clock.advance(5.0)
        ready, details = readiness(client)
        self.assertFalse(ready)
        self.assertEqual(details["listener"], "deaf")
        self.assertIn("LISTEN hears nothing", details["reason"])
        deaf_lines = [line for line in self.lines(LogLevel.warn) if "hears nothing" in line]
        self.assertEqual(len(deaf_lines), 1)
        self.assertIn("pool_mode=transaction", deaf_lines[0])
        metrics = {m.name: m for m in ClientCollector(client).collect()}
        self.assertEqual(metrics["hermes_listening"].samples[0].value, 0)
        self.assertEqual(metrics["hermes_listen_deaf"].samples[0].value, 1)
        self.clock.pump([1.0] * 105)  # three more probes, deaf
        self.assertEqual(len([line for line in self.lines(LogLevel.warn)
                              if "hears nothing" in line]), 1)
        self.assertEqual(listener.listen_probes["deaf"], 4)
        self.hears = True
        self.clock.pump([1.0] * 30)
        self.assertEqual(readiness(client), (True, {"role": "primary", "listener": "listening",
                                                    "processor": "working"}))
        self.assertIn("LISTEN hears again", " ".join(self.lines(LogLevel.info)))
        probes = {s.labels["outcome"]: s.value for s in
                  {m.name: m for m in ClientCollector(client).collect()}[
                      "hermes_listen_probes"].samples}
        self.assertEqual(probes, {"deaf": 4.0, "heard": 1.0})

    def test_deaf_stands_across_reconnects(self):
        """
        The verdict stays until a probe decides: a new connection probes at
        once and a deaf one stays deaf (no ready blip, no second line).
        """
        self.hears = False
        listener = self.make()
        self.clock.advance(5.0)
        self.assertIsNotNone(listener.deaf)
        self.listen.current.lose()
        self.clock.advance(0.1)
        self.assertEqual(listener.state, "listening")
        self.assertEqual(len(self.sent), 2)  # at once on the new connection
        self.assertFalse(listener.hears)
        self.clock.advance(5.0)
        self.assertEqual(len([line for line in self.lines(LogLevel.warn)
                              if "hears nothing" in line]), 1)

    def test_failed_probes_are_not_deaf(self):
        """
        A probe that cannot be sent: one line saying so (then at most one
        per 10 minutes), ready all the same.
        """
        self.send = lambda c, p: defer.fail(OSError("refused"))
        listener = self.make()
        self.assertTrue(listener.hears)
        self.clock.pump([1.0] * 300)
        lines = [line for line in self.lines(LogLevel.warn) if "could not check" in line]
        self.assertEqual(lines, ["PostgresNotificationListener: could not check that LISTEN hears: "
                                 "OSError: refused"])
        self.assertEqual(listener.listen_probes["failed"], 11)
        self.clock.pump([1.0] * 300)
        lines = [line for line in self.lines(LogLevel.warn) if "could not check" in line]
        self.assertEqual(len(lines), 2)
        self.assertIn("more like it left out", lines[1])

    def test_backpressure_pauses_the_check(self):
        """
        While reading is paused no probe runs (its notification could not
        be read); after resume the next one comes after the interval.
        """
        self.hears = False
        queue = EventQueue(maxsize=4)
        listener = self.make(notif_queue=queue)
        self.listen.current.deliver("1", "2", "3")
        self.assertTrue(self.listen.current.paused)
        self.clock.advance(60.0)
        self.assertIsNone(listener.deaf)  # the probe was abandoned, not failed
        self.assertEqual(len(self.sent), 1)
        queue.take(3)
        self.assertFalse(self.listen.current.paused)
        self.clock.advance(30.0)
        self.assertEqual(len(self.sent), 2)

    def test_stop_leaves_no_timer(self):
        listener = self.make()
        self.successResultOf(listener.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_check(self):
        """
        listen_check_timeout=None, or a connector that is no
        PostgresConnector without a listen_probe: no private channel, no
        probe.
        """
        listener = self.make(listen_check_timeout=None)
        self.assertIsNone(listener.check_channel)
        self.assertEqual(self.sent, [])
        other = PostgresNotificationListener(FakeListenConnector(), "c", clock=self.clock)
        self.assertIsNone(other.check_channel)
