"""
L{hermes_tx.outbox.pacing.ClaimPacer} on a L{task.Clock}: the in-flight
limit follows the processor's measured rate, between its floor and ceiling.
"""

from twisted.internet import task
from twisted.trial import unittest

from hermes_tx.outbox.pacing import ClaimPacer


def settle(pacer, clock, count, every, in_flight=True):
    """Settle C{count} changes, one every C{every} seconds."""
    for _ in range(count):
        clock.advance(every)
        pacer.settled(in_flight)


class ClaimPacerTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()

    def test_starts_at_the_ceiling(self):
        """Before anything was measured, up to the ceiling is held."""
        self.assertEqual(ClaimPacer(self.clock, 1000).limit, 1000)
        self.assertEqual(ClaimPacer(self.clock, 1000, floor=50).limit, 1000)
        self.assertEqual(ClaimPacer(self.clock, 10, floor=50).floor, 10)

    def test_slow_processor_holds_half_a_second(self):
        """5 ms a change: about 100 held (200/s for 0.5 s)."""
        pacer = ClaimPacer(self.clock, 1000)
        pacer.claimed()
        settle(pacer, self.clock, 400, 0.005)
        self.assertAlmostEqual(pacer.rate, 200.0)
        self.assertIn(pacer.limit, (99, 100))

    def test_fast_processor_reaches_the_ceiling_at_once(self):
        """Changes settled in the same instant: the ceiling after one round."""
        pacer = ClaimPacer(self.clock, 1000)
        pacer.claimed()
        settle(pacer, self.clock, 2, 0)
        self.assertEqual(pacer.limit, 1000)

    def test_fast_processor_one_change_at_a_time(self):
        """
        One change claimed and settled at a time (the floor's batch): each
        round counts, and the limit leaves the floor at once.
        """
        pacer = ClaimPacer(self.clock, 1000)
        pacer.claimed()
        self.clock.advance(0.0001)
        pacer.settled(False)
        self.assertEqual(pacer.limit, 1000)

    def test_slow_processor_one_change_at_a_time(self):
        pacer = ClaimPacer(self.clock, 1000)
        pacer.claimed()
        self.clock.advance(0.005)
        pacer.settled(False)
        self.assertEqual(pacer.limit, 100)

    def test_no_horizon_always_holds_the_ceiling(self):
        pacer = ClaimPacer(self.clock, 1000, horizon=None)
        self.assertEqual(pacer.limit, 1000)
        pacer.claimed()
        settle(pacer, self.clock, 50, 1.0)
        self.assertEqual(pacer.limit, 1000)

    def test_floor_for_a_batch_processor(self):
        """
        A batch processor slow per batch keeps two batches in flight: with
        fewer its batches, and so its rate, would shrink for ever.
        """
        pacer = ClaimPacer(self.clock, 1000)
        pacer.set_floor(200)
        pacer.claimed()
        # 100 changes settled at once every second.
        for _ in range(5):
            self.clock.advance(1.0)
            for _ in range(100):
                pacer.settled(True)
        self.assertEqual(pacer.limit, 200)

    def test_idle_time_is_not_measured(self):
        """
        Time with nothing in flight (the processor waits for changes) does
        not lower the rate.
        """
        pacer = ClaimPacer(self.clock, 1000)
        pacer.claimed()
        settle(pacer, self.clock, 20, 0.005)
        settle(pacer, self.clock, 1, 0.005, in_flight=False)
        self.clock.advance(10.0)
        settled = pacer.rate
        pacer.settled(False)  # a change of no measurement: ignored
        self.assertEqual(pacer.rate, settled)
        pacer.claimed()
        settle(pacer, self.clock, 20, 0.005)
        self.assertAlmostEqual(pacer.rate, 200.0)
        pacer.idle()
        self.clock.advance(10.0)
        pacer.claimed()
        settle(pacer, self.clock, 20, 0.005)
        self.assertAlmostEqual(pacer.rate, 200.0)

    def test_follows_a_processor_that_slows_down(self):
        """A burst does not outweigh what comes after it for long."""
        pacer = ClaimPacer(self.clock, 1000)
        pacer.claimed()
        settle(pacer, self.clock, 10, 0)
        self.assertEqual(pacer.limit, 1000)
        settle(pacer, self.clock, 300, 0.01)
        self.assertLess(pacer.limit, 60)
        self.assertGreaterEqual(pacer.limit, 50)
