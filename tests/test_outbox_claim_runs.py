"""
C{hermes.claim_runs()} (version 9) on a real server: a claim takes the
changes behind a key's oldest with it, in order and breadth first; a key
with a change in flight gets nothing; a change waiting for a retry or a
row another transaction locked ends a run.
"""

import time
import uuid

from twisted.trial import unittest

from hermes_tx.outbox import sql as statements
from tests.support.outbox import OutboxDatabase


class ClaimRunsTests(OutboxDatabase, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.clear()

    def runs(self, limit=100, conn=None, token=None):
        conn = conn or self.__dict__.get("_runner") or self.__dict__.setdefault("_runner", self.connect())
        token = token or str(uuid.uuid4())
        rows = self.execute(statements.claim_runs(self.schema), (["t"], limit, token, 30.0), conn)
        return token, [(r[0], r[2]) for r in rows]

    def fill(self, count, keys):
        """
        @return: the ids of C{count} changes over keys C{k0} .. in turn.
        """
        return [self.emit("t", f"k{i % keys}") for i in range(count)]

    def test_breadth_first(self):
        """
        The oldest change of every key first, then the second of each:
        in id order within what a claim takes.
        """
        ids = self.fill(9, 3)
        _, rows = self.runs(limit=5)
        self.assertEqual(rows, [(ids[i], f"k{i % 3}") for i in range(5)])

    def test_a_key_in_flight_is_in_flight_for_runs(self):
        """
        A key with a change in flight gets nothing more, on the claiming
        connection or another; once it is acknowledged the rest of the key
        comes in one claim.
        """
        ids = self.fill(6, 2)
        token, first = self.runs(limit=2)
        self.assertEqual([i for i, _ in first], ids[:2])
        self.assertEqual(self.runs()[1], [])
        other = self.connect()
        self.assertEqual(self.runs(conn=other)[1], [])
        self.ack(ids[:2], token)
        _, rest = self.runs(conn=other)
        self.assertEqual([i for i, _ in rest], ids[2:])

    def test_plain_claim_is_one_per_key(self):
        ids = self.fill(6, 2)
        conn = self.connect()
        _, rows = self.claim(["t"], conn=conn)
        self.assertEqual([r[0] for r in rows], ids[:2])
        self.assertEqual(self.claim(["t"], conn=conn)[1], [])

    def test_a_change_waiting_for_its_retry_ends_the_run(self):
        """
        Released for a retry, a key's change holds back the changes behind
        it; once due it comes back with them, in one claim.
        """
        ids = self.fill(6, 2)
        token, rows = self.runs(limit=2)
        conn = self.__dict__["_runner"]
        self.execute(statements.release(self.schema),
                     ("{%d}" % ids[0], token, [0.2], ["boom"], 10), conn)
        self.ack([ids[1]], token, conn)
        second, rows = self.runs()
        self.assertEqual([i for i, _ in rows], [ids[3], ids[5]])
        time.sleep(0.3)  # the retry comes due
        self.ack([ids[3], ids[5]], second, conn)
        _, rows = self.runs()
        self.assertEqual([i for i, _ in rows], [ids[0], ids[2], ids[4]])

    def test_a_locked_row_ends_the_run(self):
        """
        A change another transaction holds locked is skipped, and so is
        every change of its key behind it.
        """
        ids = self.fill(4, 1)
        locker = self.connect(autocommit=False)
        self.execute("SELECT 1 FROM hermes.outbox WHERE id = %s FOR UPDATE", (ids[1],), locker)
        token, rows = self.runs()
        self.assertEqual([i for i, _ in rows], ids[:1])
        locker.rollback()
        self.assertEqual(self.runs()[1], [])  # the first is in flight
        self.ack(ids[:1], token)
        _, rows = self.runs()
        self.assertEqual([i for i, _ in rows], ids[1:])

    def test_an_expired_claim_is_taken_over_with_its_run(self):
        ids = self.fill(3, 1)
        self.runs(limit=1)
        self.query("UPDATE hermes.outbox SET claimed_until = now() - interval '1 s' WHERE id = %s", (ids[0],))
        other = self.connect()
        _, rows = self.runs(conn=other)
        self.assertEqual([i for i, _ in rows], ids)


class ClaimRunsBoundsTests(ClaimRunsTests):
    """
    The same, with claims finding their window as on PostgreSQL 11 to 14.
    """

    claim_window = "bounds"
