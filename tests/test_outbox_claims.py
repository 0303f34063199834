"""
Tests for the outbox's claim (migration 3) on real servers: the claims of a
backend that is gone come back at once (terminated, SIGKILLed, lost in a
failover, of another role), keys of any length, rows waiting for a retry
and the rows behind them, plans that read a window whatever the
statistics say, and an upgrade of a populated version 3 outbox.
"""

import os
import random
import signal
import string
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import timedelta

import psycopg2
from twisted.trial import unittest

from hermes_tx.outbox import sql as statements
from hermes_tx.outbox.capture import capture
from hermes_tx.outbox.privileges import grants
from hermes_tx.outbox.schema import install, latest_version
from tests.support.fixtures import PrimaryStandbyFixtures
from tests.support.outbox import OutboxDatabase, in_thread, join_threads


def incompressible(length, seed):
    """
    @return: C{length} characters of printable noise (pglz cannot shrink it).
    """
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(length))


def wait_gone(cluster, pid, timeout=10.0):
    """
    Wait until no backend has C{pid} any more.
    """
    deadline = time.monotonic() + timeout
    while cluster.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))[0][0]:
        if time.monotonic() > deadline:
            raise AssertionError(f"backend {pid} still there after {timeout} s")
        time.sleep(0.01)


class TakeoverTests(OutboxDatabase, unittest.TestCase):
    """
    A claim lasts its visibility timeout while the backend that made it
    lives, and comes back at once when that backend is gone.
    """

    def setUp(self):
        super().setUp()
        self.clear()

    def terminate(self, conn):
        pid = conn.get_backend_pid()
        self.query("SELECT pg_terminate_backend(%s)", (pid,))
        wait_gone(self.cluster, pid)

    def test_terminated_backend(self):
        """
        The claims of a terminated backend are handed out by the next claim
        (their attempt counted), the old token is void, and per-key order
        still holds: the next change of a key waits for the new claim.
        """
        heads = [self.emit("t", f"k{i}") for i in range(3)]
        follower = self.emit("t", "k0")
        holder = self.connect()
        old, rows = self.claim(["t"], visibility=300.0, conn=holder)
        self.assertEqual([r[0] for r in rows], heads)
        self.assertEqual(self.claim(["t"])[1], [])
        self.terminate(holder)
        new, rows = self.claim(["t"])
        self.assertEqual([(r[0], r[3]) for r in rows], [(h, 1) for h in heads])
        self.assertEqual(self.ack(heads, old), [])
        self.assertEqual(self.claim(["t"])[1], [])
        self.assertEqual(self.ack([heads[0]], new), [heads[0]])
        self.assertEqual([r[0] for r in self.claim(["t"])[1]], [follower])

    def test_extension_on_a_new_connection_keeps_the_claims(self):
        """
        A consumer whose connection was lost extends what it holds on its
        next connection: those claims are that backend's now, and outlive
        the first one's end (version 5).
        """
        ids = [self.emit("t", f"k{i}") for i in range(2)]
        first, second = self.connect(), self.connect()
        token, rows = self.claim(["t"], visibility=300.0, conn=first)
        self.assertEqual([r[0] for r in rows], ids)
        self.assertEqual(self.execute(statements.extend(), ("{%d}" % ids[0], token, 300.0), second),
                         [(ids[0],)])
        self.terminate(first)
        self.assertEqual([r[0] for r in self.claim(["t"])[1]], ids[1:])
        self.assertEqual(self.ack(ids[:1], token), ids[:1])

    def test_live_backend_keeps_its_claims(self):
        """
        A backend that is alive keeps its claims, idle or busy with another
        statement.
        """
        self.emit("t", "k")
        holder = self.connect()
        self.claim(["t"], visibility=300.0, conn=holder)
        self.assertEqual(self.claim(["t"])[1], [])
        thread, result = in_thread(self.execute, "SELECT pg_sleep(0.5)", None, holder)
        time.sleep(0.1)
        self.assertEqual(self.claim(["t"])[1], [])
        thread.join(10)
        self.assertEqual(result, {"value": [("",)]})
        self.assertEqual(self.claim(["t"])[1], [])

    def test_sigkilled_process(self):
        """
        A process SIGKILLed while it holds claims: its backend ends with its
        socket, and the next claim takes its changes, long before their
        visibility timeout.
        """
        ids = [self.emit("t", f"k{i}") for i in range(5)]
        script = textwrap.dedent(
            """
            import sys, time, psycopg2
            conn = psycopg2.connect(sys.argv[1])
            conn.autocommit = True
            cur = conn.cursor()
            cur.execute("SELECT id FROM hermes.claim(%s, 10, gen_random_uuid(), 300)", (["t"],))
            print(" ".join(str(r[0]) for r in cur.fetchall()), flush=True)
            time.sleep(120)
            """
        )
        proc = subprocess.Popen([sys.executable, "-c", script, self.dsn], stdout=subprocess.PIPE, text=True)
        self.addCleanup(proc.wait)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        self.assertEqual(proc.stdout.readline().split(), [str(i) for i in ids])
        self.assertEqual(self.claim(["t"])[1], [])
        proc.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:
            rows = self.claim(["t"])[1]
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        self.assertEqual([(r[0], r[3]) for r in rows], [(i, 1) for i in ids])

    def test_uncommitted_claim_of_a_terminated_backend(self):
        """
        A claim not yet committed holds its rows (others skip them); when
        its backend is terminated it rolls back: the rows come back with no
        attempt counted.
        """
        ids = [self.emit("t", f"k{i}") for i in range(2)]
        holder = self.connect(autocommit=False)
        _, rows = self.claim(["t"], conn=holder)
        self.assertEqual(len(rows), 2)
        self.assertEqual(self.claim(["t"])[1], [])
        self.terminate(holder)
        self.assertEqual([(r[0], r[3]) for r in self.claim(["t"])[1]], [(i, 0) for i in ids])

    def test_pid_of_a_later_backend(self):
        """
        A claim whose pid now belongs to a backend that started after it
        (the pid was reused) is lost; one made after that backend started
        is its own.
        """
        change = self.emit("t", "k")
        other = self.connect()
        [(pid, started)] = self.query(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = %s", (other.get_backend_pid(),))
        held = ("UPDATE hermes.outbox SET claim_token = gen_random_uuid(), attempts = 1,"
                " claimed_until = now() + interval '300 s', claim_pid = %s, claimed_at = %s")
        self.query(held, (pid, started + timedelta(seconds=1)))
        self.assertEqual(self.claim(["t"])[1], [])
        self.query(held, (pid, started - timedelta(seconds=1)))
        self.assertEqual([r[0] for r in self.claim(["t"])[1]], [change])

    def test_claim_free_rules(self):
        """
        claim_free: free when never claimed, expired, or when no backend on
        the list has the claim's pid and started before the claim; kept
        when the claim is newer than the list, when a backend with a hidden
        start time has that pid, or when the claim has no pid (made before
        version 4).
        """
        rows = self.query(
            """
            WITH c (label, until, pid, at) AS (VALUES
                ('never',   NULL::timestamptz, NULL::integer, NULL::timestamptz),
                ('expired', now() - interval '1 s', 7, now() - interval '60 s'),
                ('gone',    now() + interval '60 s', 7, now() - interval '60 s'),
                ('newer',   now() + interval '60 s', 7, now() + interval '10 s'),
                ('alive',   now() + interval '60 s', 8, now() - interval '60 s'),
                ('reused',  now() + interval '60 s', 9, now() - interval '60 s'),
                ('hidden',  now() + interval '60 s', 10, now() - interval '60 s'),
                ('no pid',  now() + interval '60 s', NULL, NULL))
            SELECT label, hermes.claim_free(until, pid, at, ARRAY[8, 9, 10],
                ARRAY[now() - interval '90 s', now() - interval '30 s', NULL], now() + interval '1 s')
            FROM c
            """
        )
        self.assertEqual(dict(rows), {
            "never": True, "expired": True, "gone": True, "newer": False,
            "alive": False, "reused": True, "hidden": False, "no pid": False,
        })


class RoleTests(OutboxDatabase, unittest.TestCase):
    """
    Consumers that are not superusers and run as different roles, each
    seeing the other's backends without their start times.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.roles = [f"hermes_claimer_{os.getpid()}_{n}" for n in "ab"]
        for role in cls.roles:
            cls.cluster.execute(f"CREATE ROLE {role} LOGIN")
            # Exactly a consumer's rights (hermes-tx grants --consumer).
            for grant in grants("consumer", role):
                cls.cluster.execute(grant, dbname=cls.dbname)

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        for role in cls.roles:
            cls.cluster.execute(f"DROP ROLE IF EXISTS {role}")

    def connect_as(self, role):
        conn = psycopg2.connect(self.cluster.dsn(self.dbname, user=role))
        conn.autocommit = True
        self.addCleanup(conn.close)
        return conn

    def test_other_role_takes_over_once_the_backend_is_gone(self):
        """
        Role b cannot see when role a's backend started, yet knows it is
        there: a keeps its claims while it lives, b takes them once it is
        terminated.
        """
        self.clear()
        ids = [self.emit("t", f"k{i}") for i in range(3)]
        a, b = (self.connect_as(role) for role in self.roles)
        with b.cursor() as cur:
            cur.execute("SELECT backend_start FROM pg_stat_activity WHERE pid = %s", (a.get_backend_pid(),))
            self.assertEqual(cur.fetchall(), [(None,)])
        _, rows = self.claim(["t"], visibility=300.0, conn=a)
        self.assertEqual(len(rows), 3)
        self.assertEqual(self.claim(["t"], conn=b)[1], [])
        pid = a.get_backend_pid()
        self.query("SELECT pg_terminate_backend(%s)", (pid,))
        wait_gone(self.cluster, pid)
        self.assertEqual([r[0] for r in self.claim(["t"], conn=b)[1]], ids)


class FailoverTests(PrimaryStandbyFixtures, unittest.TestCase):
    def claimed_on_standby(self):
        try:
            return self.standby.execute("SELECT count(*) FROM hermes.outbox WHERE claim_token IS NOT NULL")[0][0]
        except psycopg2.errors.UndefinedTable:  # the install is not replayed yet
            return 0

    def test_claim_whose_reply_was_lost_in_a_failover(self):
        """
        A claim committed and replicated whose consumer never heard back
        (its server failed over): on the promoted standby no backend made
        it, so the next claim takes its changes at once, though the old
        primary's backend still lives.
        """
        conn = psycopg2.connect(self.primary.dsn())
        self.addCleanup(conn.close)
        install(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT hermes.emit('t', 'k' || g, '{}') FROM generate_series(1, 3) g")
            ids = [r[0] for r in cur.fetchall()]
            cur.execute(statements.claim(), (["t"], 10, str(uuid.uuid4()), 300.0))
            self.assertEqual([r[0] for r in cur.fetchall()], ids)
        deadline = time.monotonic() + 10
        while self.claimed_on_standby() < len(ids):
            self.assertLess(time.monotonic(), deadline, "standby never replayed the claim")
            time.sleep(0.02)
        self.standby.promote()
        promoted = psycopg2.connect(self.standby.dsn())
        promoted.autocommit = True
        self.addCleanup(promoted.close)
        with promoted.cursor() as cur:
            cur.execute(statements.claim(), (["t"], 10, str(uuid.uuid4()), 300.0))
            self.assertEqual([(r[0], r[3]) for r in cur.fetchall()], [(i, 1) for i in ids])


class StaleCandidateTests(OutboxDatabase, unittest.TestCase):
    def test_a_row_put_back_with_an_older_id(self):
        """
        A candidate the window saw, then deleted and inserted again
        unchanged while an older row of its key was put back (what a dead
        letter's retry does between a claim's statements) is not locked:
        the claim would hand out a change ahead of an older one.
        """
        self.clear()
        older = self.emit("t", "k")
        newer = self.emit("t", "k")
        self.query("DELETE FROM hermes.outbox WHERE id = %s", (older,))
        conn = self.connect()
        window = ("SELECT w.tids, w.ids, w.ranks, w.exact"
                  " FROM hermes.claim_window('t', 300, 3000, true, '{}', '{}', now()) w")
        [(tids, ids, ranks, exact)] = self.execute(window, None, conn)
        self.assertEqual((ids, ranks, exact), ([newer], [0], True))
        lock = ("SELECT hermes.lock_heads('t', %s::tid[], %s::bigint[], %s::integer[], 10, '{}', false,"
                " '{}', '{}', now())")
        self.assertEqual(self.execute(lock, (tids, ids, ranks), conn), [(tids,)])
        self.query(
            "WITH moved AS (DELETE FROM hermes.outbox WHERE id = %s RETURNING *)"
            " INSERT INTO hermes.outbox OVERRIDING SYSTEM VALUE SELECT * FROM moved", (newer,))
        self.query("INSERT INTO hermes.outbox (id, topic, key, payload) OVERRIDING SYSTEM VALUE"
                   " VALUES (%s, 't', 'k', '{}')", (older,))
        self.assertEqual(self.execute(lock, (tids, ids, ranks), conn), [("{}",)])
        self.assertEqual([r[0] for r in self.claim(["t"])[1]], [older])


class KeyTests(OutboxDatabase, unittest.TestCase):
    """
    Keys of any length: the outbox indexes their hash.
    """

    def setUp(self):
        super().setUp()
        self.clear()

    def test_emit_a_100_kb_key(self):
        """
        emit takes a 100 kB key of noise; changes of it go out in order,
        one at a time, apart from a key that differs in its last character.
        """
        key = incompressible(100_000, 1)
        near = key[:-1] + ("a" if key[-1] != "a" else "b")
        first = self.emit("t", key, '{"n": 1}')
        second = self.emit("t", key, '{"n": 2}')
        other = self.emit("t", near)
        token, rows = self.claim(["t"])
        self.assertEqual([(r[0], r[2]) for r in rows], [(first, key), (other, near)])
        self.assertEqual(self.claim(["t"])[1], [])
        self.ack([first], token)
        self.assertEqual([(r[0], r[2]) for r in self.claim(["t"])[1]], [(second, key)])

    def test_capture_a_2690_byte_text_primary_key(self):
        """
        A captured table whose text primary key is as long as its own index
        accepts: the application's writes go through, their changes are
        delivered in order.
        """
        conn = self.connect()
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS long_keys")
            cur.execute("CREATE TABLE long_keys (id text PRIMARY KEY, n int)")
        capture(conn, "long_keys", "long")
        key = incompressible(2690, 2)
        self.query("INSERT INTO long_keys VALUES (%s, 1)", (key,))
        self.query("UPDATE long_keys SET n = 2 WHERE id = %s", (key,))
        token, rows = self.claim(["long"])
        self.assertEqual([(r[2], r[5].count('"op": "INSERT"')) for r in rows], [(key, 1)])
        self.ack([rows[0][0]], token)
        [row] = self.claim(["long"])[1]
        self.assertEqual(row[2], key)
        self.assertIn('"op": "UPDATE"', row[5])


class WaitingTests(OutboxDatabase, unittest.TestCase):
    """
    Rows waiting for a retry are in no window; the rows behind them are
    deferred to their head's time, never handed out before it.
    """

    def setUp(self):
        super().setUp()
        self.clear()

    def release(self, ids, token, delay):
        return self.execute(statements.release(self.schema), (ids, token, [delay] * len(ids), ["x"] * len(ids), 10))

    def test_rows_behind_a_waiting_head(self):
        """
        While a key's head waits, the rows behind it are deferred to its
        time (nothing else of them changes) and other keys go on.
        """
        head = self.emit("t", "k")
        behind = [self.emit("t", "k") for _ in range(3)]
        token, _ = self.claim(["t"], limit=1)
        self.release([head], token, 60.0)
        others = [self.emit("t", f"o{i}") for i in range(2)]
        self.assertEqual([r[0] for r in self.claim(["t"])[1]], others)
        self.assertEqual(self.claim(["t"])[1], [])
        rows = self.query(
            "SELECT id, available_at = (SELECT available_at FROM hermes.outbox WHERE id = %s),"
            " attempts, claim_token FROM hermes.outbox WHERE key = 'k' ORDER BY id", (head,))
        self.assertEqual(rows, [(head, True, 1, None)] + [(i, True, 0, None) for i in behind])

    def test_waiting_rows_are_in_the_window(self):
        """
        A claim's window holds the rows waiting for a retry (version 10):
        the rows behind them are no candidates, the window is still exact
        (no probe for each candidate), and it names the rows behind with
        their head's time.  Past window_rows waiting rows it is not exact.
        """
        head = self.emit("t", "k")
        behind = [self.emit("t", "k") for _ in range(2)]
        others = [self.emit("t", f"o{i}") for i in range(2)]
        token, _ = self.claim(["t"], limit=1)
        self.release([head], token, 60.0)
        window = ("SELECT w.ids, w.exact, w.behind_ids,"
                  " w.behind_until = array_fill(o.available_at, ARRAY[cardinality(w.behind_ids)])"
                  " FROM hermes.claim_window('t', %s, %s, true, '{}', '{}', now()) w,"
                  " hermes.outbox o WHERE o.id = %s")
        [(ids, exact, behind_ids, at_head)] = self.query(window, (300, 3000, head))
        self.assertEqual((sorted(ids), exact, sorted(behind_ids), at_head), (others, True, behind, True))
        more = [self.emit("t", f"w{i}") for i in range(2)]
        token, rows = self.claim(["t"])
        self.assertEqual(sorted(r[0] for r in rows), others + more)
        self.release(more, token, 60.0)
        [(_, exact, _, _)] = self.query(window, (3, 30, head))
        self.assertFalse(exact)

    def test_deferred_rows_follow_their_head_at_once(self):
        """
        Once the head is back and acknowledged, the next row of its key
        goes at once; released again, the head takes the rows behind it
        along to its new time.
        """
        head = self.emit("t", "k")
        behind = [self.emit("t", "k") for _ in range(2)]
        self.emit("t", "other")
        token, _ = self.claim(["t"], limit=1)
        self.release([head], token, 0.3)
        self.assertEqual([r[2] for r in self.claim(["t"])[1]], ["other"])
        time.sleep(0.35)
        token, rows = self.claim(["t"])
        self.assertEqual([(r[0], r[3]) for r in rows], [(head, 1)])
        self.release([head], token, 60.0)
        self.assertEqual(self.claim(["t"])[1], [])
        self.assertEqual(
            self.query("SELECT count(*) FROM hermes.outbox WHERE key = 'k' AND available_at > now() + interval '59 s'"),
            [(3,)])
        self.query("UPDATE hermes.outbox SET available_at = now() WHERE id = %s", (head,))
        token, rows = self.claim(["t"])
        self.assertEqual([r[0] for r in rows], [head])
        self.ack([head], token)
        self.query("UPDATE hermes.outbox SET available_at = now() WHERE id = ANY (%s)", (behind,))
        self.assertEqual([r[0] for r in self.claim(["t"])[1]], behind[:1])

    def test_many_waiting_keys(self):
        """
        3,000 keys waiting with a row behind each, then ten fresh keys:
        claims of 100 find the fresh keys within a few rounds, deferring
        what is behind the waiting heads, and never hand a deferred row out.
        """
        self.query("INSERT INTO hermes.outbox (topic, key, payload)"
                   " SELECT 't', 'w' || g, '{}' FROM generate_series(1, 3000) g")
        self.query("UPDATE hermes.outbox SET available_at = now() + interval '60 s', attempts = 1")
        self.query("INSERT INTO hermes.outbox (topic, key, payload)"
                   " SELECT 't', 'w' || g, '{}' FROM generate_series(1, 3000) g")
        fresh = [self.emit("t", f"f{i}") for i in range(10)]
        got = []
        for _ in range(40):
            got += [r[0] for r in self.claim(["t"])[1]]
        self.assertEqual(got, fresh)
        self.assertEqual(self.query("SELECT count(*) FROM hermes.outbox WHERE available_at <= now()"), [(10,)])

class PlanTests(OutboxDatabase, unittest.TestCase):
    """
    A claim reads a window of rows through indexes, whatever the planner's
    statistics say and whatever plans its session cached: no sequential
    scan, and some thousands of index entries and rows at most (the window,
    the rows in flight before it, a probe per candidate), where a plan gone
    wrong reads the whole outbox (30,000 to 60,000 rows) every time.
    """

    #: index entries plus table rows a claim of 100 may read
    BOUND = 15000

    def setUp(self):
        super().setUp()
        self.clear()

    def reads(self, conn, limit=100):
        """
        Claim in a transaction of its own on C{conn}.

        @return: (sequential scans of the outbox, entries read from its
            indexes plus rows fetched from it, rows claimed).
        """
        conn.autocommit = False
        try:
            with conn.cursor() as cur:
                cur.execute(statements.claim(self.schema), (["t"], limit, str(uuid.uuid4()), 30.0))
                got = len(cur.fetchall())
                cur.execute(
                    "SELECT pg_stat_get_xact_numscans(t.oid),"
                    " pg_stat_get_xact_tuples_fetched(t.oid) + pg_stat_get_xact_tuples_returned(t.oid)"
                    " + (SELECT sum(pg_stat_get_xact_tuples_returned(i.indexrelid)) FROM pg_index i"
                    "    WHERE i.indrelid = t.oid)"
                    " FROM (SELECT 'hermes.outbox'::regclass::oid AS oid) t")
                scans, read = cur.fetchone()
            conn.commit()
        finally:
            conn.autocommit = True
        return scans, read, got

    def insert(self, rows, key):
        self.query("INSERT INTO hermes.outbox (topic, key, payload)"
                   f" SELECT 't', {key}, '{{}}' FROM generate_series(1, %s) g", (rows,))

    def claims(self, expected, count=7):
        """
        Claim C{count} times on a new connection (its first plans are made
        for the values at hand, later ones are cached): each scans no table,
        reads at most L{BOUND}, gets what is expected.
        """
        conn = self.connect()
        for n in range(count):
            scans, read, got = self.reads(conn)
            self.assertEqual((scans, got), (0, expected(n)), f"claim {n}")
            self.assertLess(read, self.BOUND, f"claim {n}")

    def test_plans_cached_on_an_empty_outbox(self):
        """
        Plans cached while the outbox was empty, statistics from an outbox
        of waiting rows; then 30,000 fresh rows besides.
        """
        conn = self.connect()
        self.query("ANALYZE hermes.outbox")
        for _ in range(6):
            self.assertEqual(self.reads(conn)[2], 0)
        self.insert(30000, "'w' || g")
        self.query("UPDATE hermes.outbox SET available_at = now() + interval '60 s', attempts = 1")
        self.query("VACUUM ANALYZE hermes.outbox")
        self.insert(30000, "'f' || g")
        for n in range(3):
            scans, read, got = self.reads(conn)
            self.assertEqual((scans, got), (0, 100))
            self.assertLess(read, self.BOUND)

    def test_statistics_of_one_key_each_on_100_keys(self):
        """
        Statistics from 30,000 rows of one key each, then 30,000 rows over
        100 keys: the first claim takes the 100 heads, the next find every
        head in flight.
        """
        self.insert(30000, "g::text")
        self.query("ANALYZE hermes.outbox")
        self.clear()
        self.insert(30000, "(g %% 100)::text")
        self.claims(lambda n: 100 if n == 0 else 0)

    def test_statistics_of_one_key_on_many_keys(self):
        """
        Statistics from 30,000 rows of one key, then 30,000 rows of one key
        each, a seventh of them waiting for a retry with a row behind each
        (the claim then probes each candidate's key, and defers).
        """
        self.insert(30000, "'one'")
        self.query("ANALYZE hermes.outbox")
        self.clear()
        self.insert(30000, "g::text")
        self.query("UPDATE hermes.outbox SET available_at = now() + interval '60 s', attempts = 1"
                   " WHERE id % 7 = 0")
        self.query("VACUUM hermes.outbox")
        self.insert(30000, "g::text")
        self.claims(lambda n: 100)

    def test_statistics_of_an_empty_outbox(self):
        """
        Statistics from an empty outbox, then 30,000 rows of another topic
        and 30,000 of this one.
        """
        self.query("ANALYZE hermes.outbox")
        self.query("INSERT INTO hermes.outbox (topic, key, payload)"
                   " SELECT 'other', g::text, '{}' FROM generate_series(1, 30000) g")
        self.insert(30000, "g::text")
        self.claims(lambda n: 100)


class WaitingBoundsTests(WaitingTests):
    """
    The same, with claims finding their window as on PostgreSQL 11 to 14.
    """

    claim_window = "bounds"


class PlanBoundsTests(PlanTests):
    """
    The same, with claims finding their window as on PostgreSQL 11 to 14.
    """

    claim_window = "bounds"


class UpgradeTests(OutboxDatabase, unittest.TestCase):
    install_outbox = False

    def test_upgrade_a_populated_outbox(self):
        """
        Version 3 with changes pending, in flight, waiting for a retry and
        dead: after the upgrade each keeps its state, claims made before it
        last their visibility timeout (they have no backend recorded), and
        a long key can be emitted.
        """
        conn = self.connect()
        install(conn, "up", target=3)
        emit = 'SELECT "up".emit(%s, %s, \'{}\')'
        claim = statements.claim("up")
        pending = [self.query(emit, ("t", "p"))[0][0] for _ in range(2)]
        waiting = self.query(emit, ("t", "w"))[0][0]
        flying = self.query(emit, ("t", "f"))[0][0]
        token = str(uuid.uuid4())
        self.query(claim, (["t"], 10, token, 300.0))
        self.query(statements.release("up"), ([pending[0], waiting], token, [0.0, 60.0], [None, "x"], 10))
        self.assertEqual([m.version for m in install(conn, "up")], list(range(4, latest_version() + 1)))
        again = str(uuid.uuid4())
        self.assertEqual([r[0] for r in self.execute(claim, (["t"], 10, again, 30.0), conn)], [pending[0]])
        self.assertEqual(self.query(statements.ack("up"), ([flying], token)), [(flying,)])
        self.assertEqual(self.query(statements.ack("up"), ([pending[0]], again)), [(pending[0],)])
        self.assertEqual([r[0] for r in self.execute(claim, (["t"], 10, again, 30.0), conn)], [pending[1]])
        key = incompressible(5000, 3)
        self.query(emit, ("t", key))
        rows = self.execute(claim, (["t"], 10, str(uuid.uuid4()), 30.0), conn)
        self.assertEqual([r[2] for r in rows], [key])


class ConcurrentTests(OutboxDatabase, unittest.TestCase):
    """
    Writers, claimers that acknowledge or release (some with a retry delay)
    and a claimer whose backend is terminated while it holds changes, all
    at once on their own connections.
    """

    def test_per_key_order_with_retries_and_a_lost_claimer(self):
        """
        Every change is acknowledged once; per key, changes are acknowledged
        in id order; a change is claimed only after the one before it of
        its key was acknowledged; a released change is claimed again before
        anything after it of its key; the lost claimer's changes go to the
        others.
        """
        self.clear()
        keys = [f"key-{i}" for i in range(40)]
        log = []
        lock = threading.Lock()
        writing = threading.Event()
        writing.set()

        def record(*events):
            with lock:
                log.extend(events)

        def write(seed):
            conn = self.connect()
            rng = random.Random(seed)
            return [self.emit("t", rng.choice(keys), conn=conn) for _ in range(300)]

        def consume(seed):
            conn = self.connect()
            rng = random.Random(seed)
            idle = 0
            while idle < 30:
                token, rows = self.claim(["t"], limit=rng.choice([1, 7, 50]), conn=conn)
                record(*(("claimed", r[0], r[2]) for r in rows))
                if not rows:
                    idle = idle + 1 if not writing.is_set() else 0
                    time.sleep(0.005)
                    continue
                back = [r for r in rows if rng.random() < 0.2]
                done = [r for r in rows if r not in back]
                if back:
                    record(*(("releasing", r[0], r[2]) for r in back))
                    delays = [rng.choice([0.0, 0.02]) for _ in back]
                    self.execute(statements.release(self.schema),
                                 ([r[0] for r in back], token, delays, [None] * len(back), 1000), conn)
                record(*(("acking", r[0], r[2]) for r in done))
                self.ack([r[0] for r in done], token, conn=conn)

        early = [self.emit("t", key) for key in keys[:10]]
        lost = self.connect()
        _, held = self.claim(["t"], limit=10, visibility=300.0, conn=lost)
        self.assertEqual([r[0] for r in held], early)
        record(*(("lost", r[0], r[2]) for r in held))
        writers = [in_thread(write, seed) for seed in (1, 2)]
        consumers = [in_thread(consume, seed) for seed in (3, 4, 5)]
        time.sleep(0.1)
        self.query("SELECT pg_terminate_backend(%s)", (lost.get_backend_pid(),))
        written = sorted(early + [i for ids in join_threads(self, writers) for i in ids])
        writing.clear()
        join_threads(self, consumers, 120)

        acked = [(i, k) for event, i, k in log if event == "acking"]
        self.assertEqual(sorted(i for i, _ in acked), written)
        in_hand = {}  # key -> the change claimed and not yet given up
        last_acked = {}
        for event, change, key in log:
            if event in ("claimed", "lost"):
                self.assertIn(in_hand.get(key), (None, change) if event == "claimed" else (None,),
                              f"{key}: {change} claimed while {in_hand.get(key)} was in hand")
                self.assertLess(last_acked.get(key, 0), change)
                in_hand[key] = change
            elif event == "acking":
                self.assertEqual(in_hand.pop(key), change)
                last_acked[key] = change
            else:
                self.assertEqual(in_hand.pop(key), change)
        self.assertEqual(self.outbox(), [])


class ConcurrentBoundsTests(ConcurrentTests):
    """
    The same, with claims finding their window as on PostgreSQL 11 to 14.
    """

    claim_window = "bounds"
