# -*- test-case-name: tests.test_backoff -*-
"""
Backoff: how long whoever owns a retry waits before trying again.

A policy is a pure function of the number of failed attempts so far, in
the style of L{twisted.application.internet.backoffPolicy}.  A L{Backoff}
pairs a policy with its attempt count, which its owner resets on success:
for a connection that is established and working, gRPC's connection-backoff
rule (the next loss starts again from the shortest delay).
"""

import random


def shrink_up_to_tenth(delay):
    """
    Jitter that never exceeds the cap: spread retries of many clients over
    the last tenth of each delay.
    """
    return delay * (1.0 - random.random() * 0.1)


def backoff_policy(initial=1.0, factor=2.0, max_delay=16.0, jitter=shrink_up_to_tenth):
    """
    A pure backoff policy.

    @param initial: seconds to wait before the first retry.
    @param factor: each further retry waits this many times longer.
    @param max_delay: no retry waits longer than this many seconds.
    @param jitter: C{None} for exact delays, or a callable taking the exact
        delay and returning the delay to use (the default takes off up to a
        tenth at random, so the cap still holds).
    @return: a callable taking the number of failed attempts so far (0 for the
        first retry) and returning the seconds to wait.
    """

    def policy(attempt):
        # Bound the exponent: factor ** attempt overflows long before a
        # service gives up retrying.
        delay = min(initial * factor ** min(attempt, 64), max_delay)
        return jitter(delay) if jitter is not None else delay

    return policy


class Backoff:
    """
    A policy and the count of attempts that failed in a row.

    @ivar policy: the pure policy (see L{backoff_policy}).
    @ivar attempts: failed attempts since the last L{reset}.
    """

    def __init__(self, policy):
        self.policy = policy
        self.attempts = 0

    def next_delay(self):
        """
        @return: the seconds to wait before the next attempt, counting one
            more failed attempt.
        """
        delay = self.policy(self.attempts)
        self.attempts += 1
        return delay

    def reset(self):
        """
        The owner succeeded: the next failure waits the shortest delay.
        """
        self.attempts = 0

    def __repr__(self):
        return f"<Backoff attempts={self.attempts}>"
