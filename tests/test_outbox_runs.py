"""
L{hermes_tx.outbox.runs.KeyRuns}, alone and inside a
L{hermes_tx.outbox.claims.Ledger} with a fake writer: one change of a key
at a time to the processor, in order, the next once the acknowledgement
of the one before is written; what follows a change that failed goes
back.
"""

from collections import Counter

from twisted.internet import defer, task
from twisted.trial import unittest

from hermes_tx.events import Change
from hermes_tx.outbox.claims import Claim, Ledger
from hermes_tx.outbox.runs import KeyRuns


def change(id_, key, claim=None):
    return Change(id_, "t", key, 0, 0.0, "{}", {}, claim)


class KeyRunsTests(unittest.TestCase):
    def setUp(self):
        self.handed = []
        self.back = []
        self.runs = KeyRuns(self.handed.extend, self.give_back)

    def give_back(self, changes):
        # as the ledger does: each is settled, an unclaim owed
        for c in changes:
            self.back.append(c)
            self.runs.settled(c, "unclaim")

    def test_distinct_keys_go_on_at_once(self):
        changes = [change(1, "a"), change(2, "b"), change(3, "c")]
        self.assertEqual(self.runs.admit(changes), changes)
        self.assertEqual(self.runs.waiting, 0)

    def test_a_run_goes_on_one_change_at_a_time(self):
        """
        The second change of a key waits until the acknowledgement of the
        first is written, the third until the second's; a dead letter
        counts as done.
        """
        a1, b1, a2, a3 = change(1, "a"), change(2, "b"), change(3, "a"), change(4, "a")
        self.assertEqual(self.runs.admit([a1, b1, a2, a3]), [a1, b1])
        self.assertEqual(self.runs.waiting, 2)
        self.runs.settled(a1, "ack")
        self.assertEqual(self.handed, [])  # not before the acknowledgement is written
        self.runs.written(a1, "ack")
        self.assertEqual(self.handed, [a2])
        self.runs.settled(a2, "dead")
        self.runs.written(a2, "dead")
        self.assertEqual(self.handed, [a2, a3])
        self.runs.settled(a3, "ack")
        self.runs.written(a3, "ack")
        self.assertEqual(self.runs.waiting, 0)
        # the key is free: its next change goes on at once
        a4 = change(5, "a")
        self.assertEqual(self.runs.admit([a4]), [a4])

    def test_a_later_claim_queues_behind_the_change_in_hand(self):
        a1, a2 = change(1, "a"), change(2, "a")
        self.runs.admit([a1])
        self.assertEqual(self.runs.admit([a2]), [])
        self.assertEqual(self.runs.waiting, 1)
        self.runs.settled(a1, "ack")
        self.runs.written(a1, "ack")
        self.assertEqual(self.handed, [a2])

    def test_a_failure_gives_back_what_waits(self):
        a1, a2, a3, b1 = change(1, "a"), change(2, "a"), change(3, "a"), change(4, "b")
        self.runs.admit([a1, a2, a3, b1])
        self.runs.settled(a1, "release")
        self.assertEqual(self.back, [a2, a3])
        self.assertEqual(self.handed, [])
        self.assertEqual(self.runs.waiting, 0)
        # the key is free again: the failed change comes back with its run
        again, a2 = change(1, "a"), change(2, "a")
        self.assertEqual(self.runs.admit([again, a2]), [again])

    def test_an_acknowledgement_that_finds_nothing(self):
        """
        The acknowledgement did not find the change under its claim (the
        claim was lost: another consumer has it): what waits goes back.
        """
        a1, a2 = change(1, "a"), change(2, "a")
        self.runs.admit([a1, a2])
        self.runs.settled(a1, "ack")
        self.runs.written(a1, "ack", found=False)
        self.assertEqual((self.handed, self.back), ([], [a2]))

    def test_a_lost_claim_gives_back_what_waits(self):
        a1, a2 = change(1, "a"), change(2, "a")
        self.runs.admit([a1, a2])
        self.runs.lost(a1)
        self.assertEqual(self.back, [a2])
        a3 = change(3, "a")
        self.assertEqual(self.runs.admit([a3]), [a3])

    def test_waiting_changes_go_back_when_the_connection_is_lost(self):
        a1, a2, b1, b2 = change(1, "a"), change(2, "a"), change(3, "b"), change(4, "b")
        self.runs.admit([a1, b1, a2, b2])
        self.runs.give_back_waiting()
        self.assertEqual((self.back, self.runs.waiting), ([a2, b2], 0))
        # the change in hand still lets its key go on once written
        self.runs.settled(a1, "ack")
        self.runs.written(a1, "ack")
        a3 = change(5, "a")
        self.assertEqual(self.runs.admit([a3]), [a3])

    def test_the_change_in_hand_claimed_again(self):
        """
        After a lost connection the change in hand (or one waiting) may be
        claimed again under a new claim: the processor gets it again, and
        the one waiting is the new claim's.
        """
        a1, a2 = change(1, "a"), change(2, "a")
        self.runs.admit([a1, a2])
        again1, again2 = change(1, "a"), change(2, "a")
        self.assertEqual(self.runs.admit([again1, again2]), [again1])
        self.assertEqual(self.runs.waiting, 1)
        self.runs.settled(again1, "ack")
        self.runs.written(again1, "ack")
        self.assertIs(self.handed[0], again2)


class LedgerRunsTests(unittest.TestCase):
    """
    The ledger tells its runs of every change settled or lost and of every
    acknowledgement written.
    """

    def setUp(self):
        self.ledger = Ledger(task.Clock())
        self.writes = []
        self.ledger.writer = self.write
        self.handed = []
        self.ledger.runs = KeyRuns(self.handed.extend, self.give_back)
        self.claim = Claim(self.ledger, "token")

    def write(self, owed):
        d = defer.Deferred()
        self.writes.append((list(owed), d))
        return d

    def give_back(self, changes):
        for c in changes:
            self.ledger.settle(c, ("unclaim", c.claim.token, c, None, None))

    def finish(self, index, missed=()):
        owed, d = self.writes[index]
        d.callback((Counter(w[2].topic for w in owed if w[0] == "ack"), Counter(), Counter(), [],
                    set(missed)))

    def admit(self, changes):
        self.ledger.add_many(changes)
        return self.ledger.runs.admit(changes)

    def test_a_retry_gives_back_the_run(self):
        changes = [change(i, "a", self.claim) for i in (1, 2, 3)]
        self.assertEqual(self.admit(changes), changes[:1])
        self.claim.retry(changes[0], "boom")
        self.assertEqual(self.ledger.in_flight, {})
        self.finish(0)
        self.finish(1)
        kinds = [(w[0], w[2].id) for owed, _ in self.writes for w in owed]
        self.assertEqual(kinds, [("release", 1), ("unclaim", 2), ("unclaim", 3)])

    def test_done_hands_on_the_next_once_written(self):
        changes = [change(i, "a", self.claim) for i in (1, 2)]
        self.admit(changes)
        self.claim.done(changes[0])
        self.assertEqual(self.handed, [])
        self.ledger.clock.advance(0)  # the acknowledgement is written on the next turn
        self.finish(0)
        self.assertEqual(self.handed, changes[1:])
        self.assertEqual(list(self.ledger.in_flight), [2])

    def test_an_acknowledgement_not_found_gives_back_the_run(self):
        changes = [change(i, "a", self.claim) for i in (1, 2)]
        self.admit(changes)
        self.claim.done(changes[0])
        self.ledger.clock.advance(0)
        self.finish(0, missed={1})
        self.assertEqual(self.handed, [])
        self.assertEqual([(w[0], w[2].id) for w in self.writes[1][0]], [("unclaim", 2)])

    def test_lost_gives_back_what_waits(self):
        changes = [change(i, "a", self.claim) for i in (1, 2)]
        self.admit(changes)
        self.ledger.lost([1])
        self.assertEqual(self.ledger.in_flight, {})
        self.assertEqual([(w[0], w[2].id) for w in self.writes[0][0]], [("unclaim", 2)])
