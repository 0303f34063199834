"""
Tests for L{hermes_tx.runtime.backoff}: the pure policy (exact values, the cap, huge
attempt counts, jitter bounds) and L{Backoff}'s attempt count.
"""

import random

from twisted.trial import unittest


from hermes_tx.runtime.backoff import Backoff, backoff_policy, shrink_up_to_tenth


class BackoffPolicyTests(unittest.TestCase):
    def test_exact_sequence_capped(self):
        policy = backoff_policy(initial=1, factor=2, max_delay=32, jitter=None)
        self.assertEqual([policy(n) for n in range(8)], [1, 2, 4, 8, 16, 32, 32, 32])

    def test_defaults(self):
        """
        Without arguments: 1 s, doubling, capped at 16 s, jittered down.
        """
        exact = backoff_policy(jitter=None)
        self.assertEqual([exact(n) for n in range(7)], [1.0, 2.0, 4.0, 8.0, 16.0, 16.0, 16.0])
        jittered = backoff_policy()
        for attempt in range(7):
            delay = jittered(attempt)
            self.assertTrue(exact(attempt) * 0.9 <= delay <= exact(attempt), (attempt, delay))

    def test_the_schedules_hermes_uses(self):
        """
        The role-check schedule (0.1 s x1.5 up to 2 s) and the restart
        schedule (0.1 s x2 up to 16 s), exactly.
        """
        checks = backoff_policy(initial=0.1, factor=1.5, max_delay=2.0, jitter=None)
        expected = [0.1, 0.15, 0.225, 0.3375, 0.50625, 0.759375, 1.1390625, 1.70859375, 2.0, 2.0]
        for attempt, delay in enumerate(expected):
            self.assertAlmostEqual(checks(attempt), delay, places=12)
        restarts = backoff_policy(initial=0.1, factor=2.0, max_delay=16.0, jitter=None)
        self.assertEqual(
            [restarts(n) for n in range(10)],
            [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 16.0, 16.0],
        )

    def test_initial_above_the_cap(self):
        policy = backoff_policy(initial=30, factor=2, max_delay=10, jitter=None)
        self.assertEqual([policy(n) for n in range(3)], [10, 10, 10])

    def test_factor_one_is_constant(self):
        policy = backoff_policy(initial=0.5, factor=1, max_delay=10, jitter=None)
        self.assertEqual({policy(n) for n in (0, 1, 50, 10**9)}, {0.5})

    def test_huge_attempt_counts(self):
        """
        The exponent is bounded: a service that has retried for ever does
        not overflow.
        """
        for factor in (1.5, 2, 2.0, 10.0):
            policy = backoff_policy(initial=0.1, factor=factor, max_delay=16, jitter=None)
            for attempt in (64, 65, 1000, 10**6, 10**18):
                self.assertEqual(policy(attempt), 16, (factor, attempt))
        jittered = backoff_policy(initial=0.1, factor=2.0, max_delay=16)
        self.assertTrue(14.4 <= jittered(10**18) <= 16)

    def test_policy_is_pure(self):
        """
        The same attempt gives the same delay, whatever was asked before.
        """
        policy = backoff_policy(initial=0.1, factor=2, max_delay=16, jitter=None)
        first = [policy(n) for n in range(12)]
        policy(10**6)
        self.assertEqual([policy(n) for n in range(12)], first)
        self.assertEqual([policy(n) for n in reversed(range(12))], list(reversed(first)))

    def test_jitter_is_given_the_capped_delay(self):
        seen = []

        def jitter(delay):
            seen.append(delay)
            return delay / 2

        policy = backoff_policy(initial=1, factor=2, max_delay=4, jitter=jitter)
        self.assertEqual([policy(n) for n in range(4)], [0.5, 1, 2, 2])
        self.assertEqual(seen, [1, 2, 4, 4])

    def test_default_jitter_stays_under_cap(self):
        """
        The default jitter takes off at most a tenth, so the cap holds.
        """
        policy = backoff_policy(initial=0.1, factor=2, max_delay=16)
        for attempt in range(20):
            exact = min(0.1 * 2**attempt, 16)
            for _ in range(20):
                delay = policy(attempt)
                self.assertTrue(exact * 0.9 <= delay <= exact, (attempt, delay))

    def test_jitter_bounds_exactly(self):
        """
        At the extremes of C{random.random()} ([0, 1)) the jittered delay is
        the exact delay and nine tenths of it (to rounding): never above the
        cap, never below nine tenths.
        """
        self.patch(random, "random", lambda: 0.0)
        self.assertEqual(shrink_up_to_tenth(16.0), 16.0)
        self.assertEqual(backoff_policy(max_delay=16.0)(100), 16.0)
        self.patch(random, "random", lambda: 1.0 - 2**-53)
        lowest = backoff_policy(max_delay=16.0)(100)
        self.assertTrue(14.4 <= lowest < 16.0, lowest)
        self.assertAlmostEqual(lowest, 14.4, places=9)


class BackoffTests(unittest.TestCase):
    def policy(self):
        return backoff_policy(initial=1, factor=2, max_delay=8, jitter=None)

    def test_next_delay_counts_attempts(self):
        b = Backoff(self.policy())
        self.assertEqual(b.attempts, 0)
        delays = [b.next_delay() for _ in range(6)]
        self.assertEqual(delays, [1, 2, 4, 8, 8, 8])
        self.assertEqual(b.attempts, 6)

    def test_reset_starts_again_from_the_shortest(self):
        b = Backoff(self.policy())
        for _ in range(5):
            b.next_delay()
        b.reset()
        self.assertEqual(b.attempts, 0)
        self.assertEqual([b.next_delay(), b.next_delay()], [1, 2])
        b.reset()
        b.reset()
        self.assertEqual(b.attempts, 0)
        self.assertEqual(b.next_delay(), 1)

    def test_policy_is_asked_with_the_attempts_so_far(self):
        asked = []

        def policy(attempt):
            asked.append(attempt)
            return attempt * 10

        b = Backoff(policy)
        self.assertIs(b.policy, policy)
        self.assertEqual([b.next_delay() for _ in range(3)], [0, 10, 20])
        self.assertEqual(asked, [0, 1, 2])

    def test_looking_at_the_policy_does_not_count(self):
        """
        Whoever wants the next delay without counting an attempt (the role
        monitor, for checks nobody scheduled) asks the policy directly.
        """
        b = Backoff(self.policy())
        b.next_delay()
        self.assertEqual(b.policy(b.attempts), 2)
        self.assertEqual(b.policy(b.attempts), 2)
        self.assertEqual(b.attempts, 1)

    def test_huge_attempt_count(self):
        b = Backoff(self.policy())
        b.attempts = 10**12
        self.assertEqual(b.next_delay(), 8)
        self.assertEqual(b.attempts, 10**12 + 1)

    def test_repr(self):
        b = Backoff(self.policy())
        b.next_delay()
        self.assertEqual(repr(b), "<Backoff attempts=1>")
