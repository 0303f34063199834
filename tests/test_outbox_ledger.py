"""
L{hermes_tx.outbox.claims.Ledger} with a fake writer and a fake clock:
what it writes, and when, while the processor settles changes faster than
the database takes their acknowledgements.
"""

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

    def finish(self, index):
        owed, d = self.writes[index]
        d.callback((sum(1 for w in owed if w[0] == "ack"), 0, 0))


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
