"""
Tests for L{hermes_tx.outbox.budget.ByteBudget}: the bytes and changes the
next claim may bring.
"""

from twisted.trial import unittest

from hermes_tx.outbox.budget import DEFAULT_MAX_BYTES, FIRST_ROWS, ByteBudget

MIB = 1 << 20


class ByteBudgetTests(unittest.TestCase):
    def test_default(self):
        self.assertEqual(ByteBudget().bound, 64 * MIB)
        self.assertEqual(DEFAULT_MAX_BYTES, 64 * MIB)

    def test_bad_bound(self):
        for bad in (0, -1, float("nan")):
            self.assertRaises(ValueError, ByteBudget, bad)

    def test_half_of_what_is_free(self):
        """
        A claim may bring half of what is free: the driver's copy of its
        rows and the changes made of them fit in it.
        """
        budget = ByteBudget(64 * MIB)
        self.assertEqual(budget.next_claim(0, 0), (32 * MIB, FIRST_ROWS, True))
        self.assertEqual(budget.next_claim(32 * MIB, 10), (16 * MIB, FIRST_ROWS, False))

    def test_rows_at_the_size_seen(self):
        budget = ByteBudget(64 * MIB)
        budget.seen([MIB] * 3)
        self.assertEqual(budget.typical, MIB)
        self.assertEqual(budget.next_claim(0, 0), (32 * MIB, 32, True))
        self.assertEqual(budget.next_claim(40 * MIB, 40), (12 * MIB, 12, False))

    def test_sizes_rise_at_once_fall_slowly(self):
        budget = ByteBudget(64 * MIB)
        budget.seen([1000, 3000])
        self.assertEqual(budget.typical, 2000)
        budget.seen([MIB])
        self.assertEqual(budget.typical, MIB)
        budget.seen([1000])
        self.assertEqual(budget.typical, (MIB + 1000) // 2)

    def test_waits_while_little_is_free(self):
        """
        With changes in flight: no claim for less than a sixteenth of the
        bound, nor for less than one change of the size seen.  With none,
        always one (whatever is held: nothing).
        """
        budget = ByteBudget(64 * MIB)
        self.assertIsNone(budget.next_claim(57 * MIB, 1))
        self.assertEqual(budget.next_claim(56 * MIB, 1), (4 * MIB, FIRST_ROWS, False))
        budget.seen([5 * MIB])
        self.assertIsNone(budget.next_claim(56 * MIB, 1))
        self.assertEqual(budget.next_claim(54 * MIB, 1), (5 * MIB, 1, False))

    def test_bigger_than_the_bound(self):
        """
        A change bigger than the bound: nothing more while it is in flight,
        one alone when nothing is.
        """
        budget = ByteBudget(MIB)
        budget.seen([10 * MIB])
        self.assertIsNone(budget.next_claim(10 * MIB, 1))
        self.assertEqual(budget.next_claim(0, 0), (MIB // 2, 1, True))

    def test_all_cut_waits_for_the_least_of_them(self):
        budget = ByteBudget(64 * MIB)
        budget.seen([1000] * 10)
        budget.seen([20 * MIB, 30 * MIB], cut=[20 * MIB, 30 * MIB])
        self.assertEqual(budget.wanted, 20 * MIB)
        self.assertIsNone(budget.next_claim(30 * MIB, 5))
        self.assertEqual(budget.typical, 25 * MIB)
        self.assertIsNone(budget.next_claim(24 * MIB, 5))
        self.assertEqual(budget.next_claim(14 * MIB, 5), (25 * MIB, 1, False))
        self.assertEqual(budget.next_claim(0, 0)[2], True)
        budget.seen([1000], cut=[])
        self.assertEqual(budget.wanted, 0)

    def test_all_cut_waits_for_the_oldest(self):
        """
        The oldest row cut is the one the next claim would meet first.
        """
        budget = ByteBudget(64 * MIB)
        budget.seen([1000] * 10)
        budget.seen([20 * MIB, 1000], cut=[20 * MIB, 1000])
        self.assertEqual(budget.wanted, 20 * MIB)
        self.assertLess(budget.typical, 11 * MIB)
        self.assertIsNone(budget.next_claim(30 * MIB, 5))
        self.assertEqual(budget.next_claim(24 * MIB, 5)[0], 20 * MIB)

    def test_a_lost_claim_asks_for_a_quarter(self):
        """
        A claim that got no answer: the next asks for a quarter as many
        changes; the next answer's sizes count again.
        """
        budget = ByteBudget(64 * MIB)
        budget.seen([100] * 10)
        self.assertEqual(budget.next_claim(0, 0)[1], 32 * MIB // 100)
        budget.lost(500, 32 * MIB)
        self.assertEqual(budget.next_claim(0, 0)[1], 125)
        budget.lost(1, 32 * MIB)
        self.assertEqual(budget.next_claim(0, 0)[1], 1)
        budget.seen([MIB])
        self.assertEqual(budget.next_claim(0, 0)[1], 32)

    def test_first_claim_asks_for_few(self):
        self.assertEqual(ByteBudget().next_claim(0, 0)[1], FIRST_ROWS)

    def test_some_cut_wants_nothing_more(self):
        budget = ByteBudget(64 * MIB)
        budget.seen([MIB, 20 * MIB], cut=[20 * MIB])
        self.assertEqual(budget.wanted, 0)
