# -*- test-case-name: tests.test_outbox_pacing -*-
"""
L{ClaimPacer}: how many changes one outbox consumer should hold in flight,
so that consumers in other processes share the work.

A consumer that claims as much as it may hold (C{max_in_flight}, 1,000 by
default) while its processor takes 5 ms a change holds five seconds of
work: the heads of every key it claimed are in flight there, and the other
consumers, which may not take a key's next change before its head is done,
find nothing to claim.  Adding instances then adds nothing.  So each
consumer measures how fast its processor settles changes and holds about
C{horizon} seconds of that work (never less than C{floor}, never more than
C{ceiling}): a fast processor still gets full claims, a slow one leaves
the rest to others.  Until the first measurement it may hold C{ceiling}
(starting lower would split the keys' heads over several small claims, a
pattern that then repeats); a consumer holding more than twice the limit
gives back what its processor has not begun
(L{hermes_tx.outbox.consumer.OutboxConsumer.give_back}).
"""

#: seconds of the processor's work one consumer holds, by default
HORIZON = 0.5
#: the least time, in seconds, a rate is measured over (unless a whole
#: limit's worth of changes was settled sooner)
SAMPLE = 0.05
#: weight of the newest sample in the rate
ALPHA = 0.3


class ClaimPacer:
    """
    Settled changes per second, measured while changes are in flight, and
    the in-flight limit it gives.

    @ivar limit: the most changes to hold in flight now.
    @ivar rate: settled changes per second, or C{None} before the first
        measurement.
    """

    def __init__(self, clock, ceiling, floor=2, horizon=HORIZON):
        """
        @param clock: a clock: C{seconds()} (the reactor, or a C{task.Clock}).
        @param ceiling: the most ever held (the consumer's C{max_in_flight}).
        @param floor: the least held, whatever the rate (see L{set_floor}).
        @param horizon: seconds of work to hold; C{None} holds C{ceiling}.
        """
        self.clock = clock
        self.ceiling = ceiling
        self.horizon = horizon
        self.floor = min(max(1, floor), ceiling)
        self.rate = None
        self.limit = ceiling
        self._since = None  # when the current measurement began
        self._count = 0  # changes settled since then

    def set_floor(self, floor):
        """
        Hold at least C{floor} changes: twice a batch processor's
        C{max_batch}, so that its batches stay full (with fewer in flight
        its batches would shrink, and with them its rate and the limit).
        """
        self.floor = min(max(1, floor), self.ceiling)
        self._update()

    def claimed(self):
        """Changes were claimed: a measurement begins if none runs."""
        if self._since is None:
            self._since = self.clock.seconds()
            self._count = 0

    def settled(self, still_in_flight):
        """
        One change was settled.

        @param still_in_flight: whether others remain in flight (if not,
            the processor may now wait for claims: the measurement ends
            here, and counts).
        """
        if self._since is None:
            return
        self._count += 1
        now = self.clock.seconds()
        elapsed = now - self._since
        if not still_in_flight or elapsed >= SAMPLE or self._count >= self.limit:
            self._sample(self._count, elapsed)
            self._since, self._count = now, 0
        if not still_in_flight:
            self._since = None

    def _sample(self, count, elapsed):
        sample = count / elapsed if elapsed > 0 else float("inf")
        if self.horizon is not None:
            # Beyond this rate the limit is the ceiling anyway; a bound
            # keeps one burst from outweighing every later sample.
            sample = min(sample, 2.0 * self.ceiling / self.horizon)
        self.rate = sample if self.rate is None else ALPHA * sample + (1 - ALPHA) * self.rate
        self._update()

    def idle(self):
        """Nothing is in flight any more (claims lost or given back)."""
        self._since = None

    def _update(self):
        if self.horizon is None:
            self.limit = self.ceiling
        elif self.rate is not None:
            wanted = self.rate * self.horizon
            self.limit = int(min(self.ceiling, max(self.floor, wanted)))
