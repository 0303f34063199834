"""
Tests for L{hermes_tx.runtime.timers}: fake clock, nothing real.
"""

from twisted.internet import task
from twisted.trial import unittest

from hermes_tx.runtime.timers import Timers


class TimersTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.timers = Timers(self.clock)
        self.calls = []

    def action(self, name):
        return lambda: self.calls.append((name, self.clock.seconds()))

    def test_every_repeats_until_stopped(self):
        self.timers.every("poll", 1.0, self.action("poll"))
        self.clock.pump([1.0] * 3)
        self.assertEqual(self.calls, [("poll", 1.0), ("poll", 2.0), ("poll", 3.0)])
        self.timers.stop()
        self.clock.advance(5)
        self.assertEqual(len(self.calls), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_once_keeps_the_call_pending(self):
        """
        A second once() of a name already pending changes nothing; after it
        fired, the name may be asked for again.
        """
        self.timers.once("linger", 0.01, self.action("first"))
        self.timers.once("linger", 0.001, self.action("second"))
        self.clock.advance(0.01)
        self.assertEqual(self.calls, [("first", 0.01)])
        self.timers.once("linger", 0.5, self.action("third"))
        self.clock.advance(0.5)
        self.assertEqual([name for name, _ in self.calls], ["first", "third"])

    def test_each_calls_at_every_time_asked_for(self):
        """
        each() calls at every time asked for, a later one asked while a
        sooner is pending included; one call serves every time due when
        it is made.
        """
        released = self.action("released")
        for delay in (2.0, 3.0, 0.5, 0.5):
            self.timers.each("released", delay, released)
        self.clock.advance(0.5)
        self.assertEqual(self.calls, [("released", 0.5)])
        self.clock.advance(1.5)
        self.clock.advance(1.0)
        self.assertEqual([at for _, at in self.calls], [0.5, 2.0, 3.0])
        self.clock.advance(5)
        self.assertEqual(len(self.calls), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_each_after_a_late_call(self):
        """
        A call made late (the clock jumped past several times) serves every
        time due by then, and the next one still comes.
        """
        for delay in (1.0, 2.0, 3.0, 10.0):
            self.timers.each("released", delay, self.action("x"))
        self.clock.advance(5.0)
        self.assertEqual(len(self.calls), 1)
        self.clock.advance(5.0)
        self.assertEqual([at for _, at in self.calls], [5.0, 10.0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_cancels_every_kind(self):
        self.timers.every("poll", 1.0, self.action("poll"))
        self.timers.once("linger", 0.01, self.action("linger"))
        self.timers.each("released", 0.2, self.action("released"))
        self.timers.stop()
        self.clock.advance(10)
        self.assertEqual(self.calls, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
