# -*- test-case-name: tests.test_outbox_budget -*-
"""
L{ByteBudget}: how many bytes of payloads one outbox consumer may claim
next, so that what it holds in flight (claimed, not yet settled) stays
within a bound in bytes (C{max_in_flight_bytes}, 64 MiB by default), not
only in changes.

Where the memory goes (measured draining 300 changes of 1 MB, one claim
of all of them: 664 MiB peak RSS with 59 MiB idle): the driver (libpq's
result) holds every row of a claim while psycopg2 makes a Python string of
each payload, so a claim of C{n} bytes costs C{2 n} until its result is
freed, and the strings (C{n}) then live until their changes are settled.
So a claim takes at most half of the bytes the bound leaves free: the
payloads held, with the driver's copy of the claim arriving, stay within
the bound.

The budget is enforced where the rows are read, by the claim statement
(L{hermes_tx.outbox.sql.claim_within}): the rows past it come back without
their payload and are given back at once.  So the consumer also asks for
no more rows than the budget holds at the sizes seen so far
(L{typical}): a claim that must be cut is a claim whose sizes grew.
Nothing in flight, the first row comes whatever its size: a change bigger
than the bound still flows, alone.

The server reads and sends (as text) every row a claim takes, cut or not:
a claim of many big rows is slow (about 15 to 30 ms per row of 1 MB on
these machines), and one slower than the liveness timeout is lost with its
connection.  So before any size is seen a claim asks for few rows
(L{FIRST_ROWS}), and after a claim that got no answer the next asks for a
quarter as many (L{ByteBudget.lost}).
"""

#: the default bound: bytes of payloads held in flight by one consumer
DEFAULT_MAX_BYTES = 64 << 20

#: with changes in flight, no claim for less than this share of the bound
#: (a claim per settled change would cost a round trip each)
LEAST_SHARE = 8

#: weight of the newest claim's mean size when sizes shrink (when they
#: grow, it is taken at once)
ALPHA = 0.5

#: the most changes a claim asks for before any size was seen: the server
#: reads every row a claim takes, cut or not (a claim of 500 rows of 1 MB
#: took 8 to 10 s on a busy machine, near the liveness timeout's 10 s)
FIRST_ROWS = 16


class ByteBudget:
    """
    The bytes the next claim may take, and the payload size expected of
    a change.

    @ivar bound: the most bytes of payloads held in flight.
    @ivar typical: bytes of a change's payload as seen in claims (a mean,
        quick to rise, slower to fall), or C{None} before the first claim.
    """

    def __init__(self, bound=DEFAULT_MAX_BYTES):
        """
        @param bound: bytes, at least 1.
        """
        if not bound >= 1:
            raise ValueError(f"a byte bound must be at least 1, not {bound!r}")
        self.bound = int(bound)
        self.typical = None
        # the bytes of the oldest row of a claim that had to cut all of
        # them (the next claim waits until that much fits, or nothing is
        # in flight: it would meet that row first again)
        self.wanted = 0
        # a lost claim's guess of the sizes (the next sizes seen replace
        # it whatever they are), or None: typical is a mean of sizes seen
        self._guess = None

    def next_claim(self, held, in_flight):
        """
        @param held: bytes of payloads in flight now.
        @param in_flight: changes in flight now.
        @return: C{None} to claim nothing now (too little is free: claim
            once changes are settled), else C{(budget, rows, first)}: the
            claim may bring C{budget} bytes of payloads, in at most C{rows}
            changes (at the sizes seen; L{FIRST_ROWS} before any), and its first row
            whatever its size if C{first} (nothing in flight).
        """
        budget = max(0, self.bound - held) // 2
        typical = self.typical
        if in_flight:
            if budget < max(self.bound // (2 * LEAST_SHARE), typical or 1, self.wanted, 1):
                return None
            first = False
        else:
            first = True
        rows = FIRST_ROWS if not typical else max(1, budget // typical)
        return budget, rows, first

    def lost(self, rows, budget):
        """
        A claim of C{rows} changes within C{budget} bytes got no answer
        (its connection was lost, or its deadline passed): its rows may
        have been bigger than the sizes seen said, so the next claim asks
        for a quarter as many (the sizes of the next answer count again).
        """
        self.typical = self._guess = max(self.typical or 1, budget // max(1, rows // 4))

    def seen(self, sizes, cut=()):
        """
        A claim came back with payloads of these sizes (those cut by the
        budget included).

        @param cut: the sizes of the rows cut by the budget, in id order:
            if every row was cut, the next claim waits until the first of
            them fits.
        """
        self.wanted = cut[0] if cut and len(cut) == len(sizes) else 0
        if not sizes:
            return
        mean = max(1, sum(sizes) // len(sizes))
        typical = self.typical
        if typical is None or mean >= typical or self._guess is not None:
            self.typical = mean
            self._guess = None
        else:
            self.typical = max(1, int(ALPHA * mean + (1 - ALPHA) * typical))
