"""
L{hermes_tx.outbox.claims.Ledger} with a fake writer and a fake clock:
what it writes, and when, while the processor settles changes faster than
the database takes their acknowledgements.
"""

from collections import Counter

from twisted.internet import defer, task
from twisted.trial import unittest

from hermes_tx.events import Change
from hermes_tx.outbox.claims import ACK_BATCH, Claim, Ledger


class SlowWriter:
    """
    A writer whose writes finish when the test says so.
    """

    def __init__(self):
        self.writes = []  # (owed, Deferred)

    def __call__(self, owed):
        d = defer.Deferred()
        self.writes.append((list(owed), d))
        return d

    def finish(self, index, failed=()):
        owed, d = self.writes[index]
        acked = Counter(w[2].topic for w in owed if w[0] == "ack")
        d.callback((acked, Counter(), Counter(), list(failed), set()))


class BacklogTests(unittest.TestCase):
    def setUp(self):
        self.ledger = Ledger(task.Clock())
        self.writer = self.ledger.writer = SlowWriter()
        self.claim = Claim(self.ledger, "token")

    def settle(self, count, start=0):
        for i in range(start, start + count):
            change = Change(i, "t", str(i), 0, 0.0, "{}", {}, self.claim)
            self.ledger.add(change)
            self.claim.done(change)

    def test_acknowledgements_settled_during_a_write_go_in_the_next_one(self):
        """
        Thousands of changes settled while the first write is under way
        are written together once it is done, and the ledger is then free:
        a flush completes at once.
        """
        self.settle(3000)
        self.assertEqual([len(owed) for owed, _ in self.writer.writes], [ACK_BATCH])
        self.writer.finish(0)
        self.assertEqual([len(owed) for owed, _ in self.writer.writes], [ACK_BATCH, 3000 - ACK_BATCH])
        self.writer.finish(1)
        self.assertEqual(self.ledger.owed, 0)
        self.assertEqual(self.ledger.counts["acked"], 3000)
        flushed = self.ledger.flush()
        self.assertTrue(flushed.called, "the ledger's writes are still locked")
        self.assertEqual(len(self.writer.writes), 2)


class HostileOutcomeTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.ledger = Ledger(self.clock)
        self.writer = self.ledger.writer = SlowWriter()

    def change(self, id, token="token"):
        change = Change(id, "t", str(id), 0, 0.0, "{}", {}, Claim(self.ledger, token))
        self.ledger.add(change)
        return change

    def test_reason_with_nul_and_endless_retry_after(self):
        """
        A reason holding NUL and a retry_after PostgreSQL cannot hold are
        written as text without NUL and a day at most.
        """
        a, b = self.change(1), self.change(2)
        a.claim.reject(a, ValueError("bad\x00byte"))
        self.writer.finish(0)
        b.claim.retry(b, "later", retry_after=float("inf"))
        written = [w for owed, _ in self.writer.writes for w in owed]
        self.assertNotIn("\x00", written[0][4])
        self.assertIn("bad", written[0][4])
        self.assertEqual([w for w in written if w[0] == "release"][0][3], 86400.0)

    def test_a_statement_that_fails_for_another_reason_is_tried_again_alone(self):
        """
        A statement failing for anything but a lost connection (a missing
        grant, a statement timeout) does not hold up later writes and is
        never dropped: it is tried again alone after 1, 2, 4 ... s, with one
        line (at most one in ten seconds), until it is written.
        """
        from twisted.logger import formatEvent

        from tests.support.shared import capture_log

        log = capture_log(self)
        a = self.change(1)
        a.claim.reject(a, "x")
        error = ValueError("permission denied for table dead_letters")
        self.writer.finish(0, failed=[(self.writer.writes[0][0], error)])
        b = self.change(2)
        b.claim.done(b)
        self.clock.advance(0)
        [(kind, token, settled, delay, reason)] = self.writer.writes[1][0]
        self.assertEqual((kind, token, settled.id, delay, reason), ("ack", "token", b.id, None, None))
        self.writer.finish(1)
        lines = [formatEvent(e) for e in log]
        self.assertIn("writing 1 outbox outcome(s) failed: ValueError: permission denied for table "
                      "dead_letters; trying again in 1 s", lines)
        self.clock.advance(1.0)
        self.assertEqual([w[0] for w in self.writer.writes[2][0]], ["dead"])
        self.writer.finish(2, failed=[(self.writer.writes[2][0], error)])
        self.clock.advance(1.9)
        self.assertEqual(len(self.writer.writes), 3)
        self.clock.advance(0.1)
        self.assertEqual([w[0] for w in self.writer.writes[3][0]], ["dead"])
        self.writer.finish(3)
        self.assertEqual(self.ledger.owed, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len([line for line in lines if "failed" in line]), 1)

    def test_a_stale_change_does_not_settle_a_newer_claim(self):
        """
        The same change claimed again (another token) while its old copy
        was queued: settling the old copy leaves the new claim in flight.
        """
        old = self.change(1, "old")
        new = self.change(1, "new")
        old.claim.done(old)
        self.assertIs(self.ledger.in_flight[1], new)
        new.claim.done(new)
        self.assertEqual(self.ledger.in_flight, {})


class HeldTests(unittest.TestCase):
    """
    The bytes of the payloads in flight (L{Ledger.held}), and writes owed
    that do not keep the changes' payloads alive.
    """

    def setUp(self):
        self.ledger = Ledger(task.Clock())
        self.writer = self.ledger.writer = SlowWriter()
        self.claim = Claim(self.ledger, "token")

    def change(self, id, payload):
        return Change(id, "t", f"k{id}", 2, 0.0, payload, claim=self.claim)

    def test_sizes_as_claimed_or_the_text_length(self):
        a, b = self.change(1, "x" * 10), self.change(2, "y" * 20)
        self.ledger.add_many([a, b], [15, 25])
        self.assertEqual(self.ledger.held, 40)
        c = self.change(3, "z" * 7)
        self.ledger.add(c)
        self.assertEqual(self.ledger.held, 47)
        self.claim.done(a)
        self.claim.retry(b, "again")
        self.assertEqual(self.ledger.held, 7)
        self.assertEqual(self.ledger.forget_all(), [c])
        self.assertEqual(self.ledger.held, 0)

    def test_claimed_again_counts_once(self):
        self.ledger.add_many([self.change(1, "x" * 10)], [10])
        self.ledger.add_many([self.change(1, "x" * 10)], [12])
        self.assertEqual(self.ledger.held, 12)
        self.ledger.lost([1])
        self.assertEqual(self.ledger.held, 0)

    def test_owed_writes_hold_no_payload(self):
        """
        A settled change's write waiting for the connection keeps its id,
        topic, key and attempts, not the change (nor its payload).
        """
        import gc
        import weakref

        class Payload(str):
            pass

        payload = Payload("p" * 1000)
        change = self.change(1, payload)
        self.ledger.add(change)
        self.ledger.writer = None  # no connection: the write waits
        self.claim.reject(change, "bad")
        ref = weakref.ref(payload)
        del change, payload
        gc.collect()
        self.assertIsNone(ref())
        self.assertEqual(self.ledger.owed, 1)
        self.ledger.writer = self.writer
        self.ledger.flush()
        [(kind, token, settled, _, reason)] = self.writer.writes[0][0]
        self.assertEqual((kind, settled.id, settled.topic, settled.key, settled.attempts, reason),
                         ("dead", 1, "t", "k1", 2, "bad"))
