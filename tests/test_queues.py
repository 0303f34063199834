"""
Tests for L{hermes_tx.runtime.queue.EventQueue}.
"""

from twisted.internet import defer
from twisted.trial import unittest

from hermes_tx.runtime.queue import EventQueue


class EventQueueTests(unittest.TestCase):
    def test_fifo(self):
        q = EventQueue()
        q.put(1)
        q.put_many([2, 3])
        self.assertEqual([self.successResultOf(q.get()) for _ in range(3)], [1, 2, 3])
        self.assertEqual(len(q), 0)

    def test_waiting_consumer_woken_once_per_batch(self):
        """
        put_many hands the first item to the waiting consumer and leaves the
        rest queued for it to take without waiting.
        """
        q = EventQueue()
        got = []
        q.get().addCallback(got.append)
        q.put_many(["a", "b", "c"])
        self.assertEqual(got, ["a"])
        self.assertEqual(list(q.pending), ["b", "c"])

    def test_cancelled_get_is_withdrawn(self):
        q = EventQueue()
        d = q.get()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        q.put(1)
        self.assertEqual(list(q.pending), [1])

    def test_take(self):
        q = EventQueue()
        q.put_many(range(5))
        self.assertEqual(q.take(3), [0, 1, 2])
        self.assertEqual(q.take(10), [3, 4])
        self.assertEqual(q.take(10), [])

    def test_full_and_space(self):
        """
        is_full from maxsize; on_space callbacks run once, when the queue is
        down to its low water mark (half of maxsize by default).
        """
        q = EventQueue(maxsize=4)
        self.assertEqual(q.low_water, 2)
        q.put_many(range(4))
        self.assertTrue(q.is_full)
        called = []
        q.on_space(lambda: called.append(len(q)))
        self.assertEqual(self.successResultOf(q.get()), 0)
        self.assertEqual(called, [])
        self.assertEqual(q.popleft(), 1)
        self.assertEqual(called, [2])
        q.take(2)
        self.assertEqual(called, [2])
        self.assertFalse(q.is_full)

    def test_on_space_at_once_when_room(self):
        q = EventQueue(maxsize=10)
        called = []
        q.on_space(lambda: called.append(True))
        self.assertEqual(called, [True])

    def test_unbounded(self):
        q = EventQueue()
        q.put_many(range(100000))
        self.assertFalse(q.is_full)
