"""
Tests for L{hermes_tx.outbox.sql}: the consumer's statements (claim, ack,
release, dead_letter, extend, stats) on a real server, in a database of
their own.
"""

import json
import threading
import time
import uuid

from twisted.trial import unittest

from hermes_tx.outbox import sql as statements
from tests.support.outbox import OutboxDatabase, in_thread, join_threads


class ClaimTests(OutboxDatabase, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.clear()

    def test_claim_oldest_first(self):
        """
        A claim returns id, topic, key, attempts (0 the first time),
        created_at in seconds since the epoch and the payload as JSON text,
        in id order, and marks the rows with the token.
        """
        ids = [self.emit("t", f"k{i}", json.dumps({"n": i, "ü": "ß"})) for i in range(3)]
        before = time.time()
        token, rows = self.claim(["t"])
        self.assertEqual([r[0] for r in rows], ids)
        self.assertEqual([(r[1], r[2], r[3]) for r in rows], [("t", f"k{i}", 0) for i in range(3)])
        self.assertEqual([json.loads(r[5]) for r in rows], [{"n": i, "ü": "ß"} for i in range(3)])
        for row in rows:
            self.assertIsInstance(row[4], float)
            self.assertLess(abs(row[4] - before), 60)
        self.assertEqual(
            self.outbox("claim_token::text, attempts, claimed_until > now() + interval '29 s'"),
            [(token, 1, True)] * 3,
        )

    def test_limit_and_topics(self):
        """
        Only the topics asked for are claimed, at most C{limit} rows.
        """
        for i in range(5):
            self.emit("a", f"k{i}")
            self.emit("b", f"k{i}")
        _, rows = self.claim(["a"], limit=3)
        self.assertEqual([(r[1], r[2]) for r in rows], [("a", "k0"), ("a", "k1"), ("a", "k2")])
        _, rows = self.claim(["zzz"])
        self.assertEqual(rows, [])
        _, rows = self.claim([], limit=3)
        self.assertEqual(rows, [])

    def test_topics_share_the_limit(self):
        """
        Several topics each get their share of the limit; what one leaves
        goes to the others.
        """
        for i in range(10):
            self.emit("a", f"k{i}")
            self.emit("b", f"k{i}")
        self.emit("c", "only")
        _, rows = self.claim(["a", "b", "c"], limit=9)
        counts = {t: sum(1 for r in rows if r[1] == t) for t in "abc"}
        self.assertEqual(counts, {"a": 4, "b": 4, "c": 1})
        _, rows = self.claim(["a", "b"], limit=100)
        self.assertEqual(len(rows), 12)

    def test_one_change_per_key_at_a_time(self):
        """
        A change is not handed out while an earlier change of its topic and
        key is in flight; once acknowledged, the next one is.
        """
        first = self.emit("t", "k")
        second = self.emit("t", "k")
        other = self.emit("t", "other")
        same_key_other_topic = self.emit("u", "k")
        token, rows = self.claim(["t", "u"])
        self.assertEqual(sorted(r[0] for r in rows), [first, other, same_key_other_topic])
        self.assertEqual(self.claim(["t", "u"])[1], [])
        self.assertEqual(self.ack([first], token), [first])
        self.assertEqual([r[0] for r in self.claim(["t"])[1]], [second])

    def test_waiting_retry_blocks_its_key(self):
        """
        A change waiting for a retry keeps the later changes of its key
        back, but not other keys.
        """
        first = self.emit("t", "k")
        self.emit("t", "k")
        other = self.emit("t", "other")
        token, rows = self.claim(["t"], limit=1)
        self.assertEqual([r[0] for r in rows], [first])
        released = self.execute(statements.release(self.schema), ([first], token, [60.0], ["boom"], 10))
        self.assertEqual(released, [(first, "retry")])
        self.assertEqual([r[0] for r in self.claim(["t"])[1]], [other])
        self.assertEqual(
            self.outbox("id, claim_token, last_error, available_at > now() + interval '59 s'")[0],
            (first, None, "boom", True),
        )

    def test_ack_needs_the_token(self):
        """
        ack deletes only rows still holding the token, and says which.
        """
        a = self.emit("t", "a")
        b = self.emit("t", "b")
        token, _ = self.claim(["t"])
        self.assertEqual(self.ack([a, b], str(uuid.uuid4())), [])
        self.assertEqual(sorted(self.ack([a, b, 999999], token)), [a, b])
        self.assertEqual(self.outbox(), [])

    def test_ack_puts_back_the_scan_setting(self):
        """
        ack plans its DELETE without sequential scans (version 9) and puts
        the setting back: a caller's transaction keeps its own.
        """
        a = self.emit("t", "a")
        token, _ = self.claim(["t"])
        conn = self.connect(autocommit=False)
        self.execute("SET LOCAL enable_seqscan = on", None, conn)
        self.assertEqual(self.ack([a], token, conn), [a])
        self.assertEqual(self.execute("SHOW enable_seqscan", None, conn), [("on",)])
        conn.commit()
        self.assertEqual(self.outbox(), [])

    def test_expired_claim_is_reclaimed_and_the_old_token_is_void(self):
        """
        After its visibility timeout a claim can be taken by another token
        (attempts counts the first delivery); the old token can then
        neither acknowledge, release, extend nor dead-letter it.
        """
        change = self.emit("t", "k")
        old, _ = self.claim(["t"], visibility=0.05)
        self.assertEqual(self.claim(["t"])[1], [])
        time.sleep(0.1)
        new, rows = self.claim(["t"])
        self.assertEqual([(r[0], r[3]) for r in rows], [(change, 1)])
        self.assertEqual(self.ack([change], old), [])
        self.assertEqual(self.execute(statements.extend(self.schema), ([change], old, 30.0)), [])
        self.assertEqual(self.execute(statements.release(self.schema), ([change], old, [0.0], [None], 10)), [])
        self.assertEqual(self.execute(statements.dead_letter(self.schema), ([change], old, ["x"])), [])
        self.assertEqual(self.ack([change], new), [change])

    def test_extend_keeps_a_claim(self):
        """
        extend pushes claimed_until forward for the rows holding the token
        (and makes the claim the extending backend's: that one lives on).
        """
        change = self.emit("t", "k")
        token, _ = self.claim(["t"], visibility=0.2)
        extender = self.connect()
        self.assertEqual(self.execute(statements.extend(self.schema), ([change], token, 30.0), extender),
                         [(change,)])
        time.sleep(0.3)
        self.assertEqual(self.claim(["t"])[1], [])
        self.assertEqual(self.outbox("claimed_until > now() + interval '29 s'"), [(True,)])

    def test_release_then_dead_letter_after_max_attempts(self):
        """
        release makes a row available again with its error; once it was
        delivered max_attempts times, release moves it to the dead letters,
        and the next change of its key is free.
        """
        first = self.emit("t", "k", '{"v": 1}')
        second = self.emit("t", "k", '{"v": 2}')
        release = statements.release(self.schema)
        token, rows = self.claim(["t"])
        self.assertEqual([(r[0], r[3]) for r in rows], [(first, 0)])
        self.assertEqual(self.execute(release, ([first], token, [0.0], ["one"], 2)), [(first, "retry")])
        token, rows = self.claim(["t"])
        self.assertEqual([(r[0], r[3]) for r in rows], [(first, 1)])
        self.assertEqual(self.execute(release, ([first], token, [0.0], ["two"], 2)), [(first, "dead")])
        dead = self.query(
            'SELECT id, topic, key, payload, attempts, last_error, failed_at <= now() FROM "hermes".dead_letters'
        )
        self.assertEqual(dead, [(first, "t", "k", {"v": 1}, 2, "two", True)])
        self.assertEqual([r[0] for r in self.claim(["t"])[1]], [second])

    def test_release_mixed_batch(self):
        """
        One release answers per row: retry or dead, each with its own delay
        and error; rows of another token are left alone.
        """
        ids = [self.emit("t", f"k{i}") for i in range(3)]
        token, _ = self.claim(["t"])
        self.query('UPDATE "hermes".outbox SET attempts = 5 WHERE id = %s', (ids[1],))
        result = self.execute(
            statements.release(self.schema), (ids + [424242], token, [0.0, 0.0, 30.0, 0.0], ["a", "b", None, "z"], 5)
        )
        self.assertEqual(sorted(result), [(ids[0], "retry"), (ids[1], "dead"), (ids[2], "retry")])
        rows = self.outbox("id, available_at > now() + interval '29 s', last_error")
        self.assertEqual(rows, [(ids[0], False, "a"), (ids[2], True, None)])

    def test_dead_letter_now(self):
        """
        dead_letter moves rows holding the token to the dead letters at
        once, whatever their attempts.
        """
        first = self.emit("t", "k")
        second = self.emit("t", "k")
        token, _ = self.claim(["t"])
        self.assertEqual(self.execute(statements.dead_letter(self.schema), ([first], token, ["rejected: 400"])), [(first,)])
        self.assertEqual(self.query('SELECT id, attempts, last_error FROM "hermes".dead_letters'), [(first, 1, "rejected: 400")])
        self.assertEqual([r[0] for r in self.claim(["t"])[1]], [second])

    def test_stats(self):
        """
        stats: per topic, pending (not in flight), in flight, the age of the
        oldest change still in the outbox, dead letters.
        """
        self.assertEqual(self.execute(statements.stats(self.schema)), [])
        for i in range(3):
            self.emit("a", f"k{i}")
        self.emit("b", "k")
        token, _ = self.claim(["a"], limit=1)
        self.query("UPDATE \"hermes\".outbox SET created_at = now() - interval '100 s' WHERE topic = 'a'")
        token_b, rows = self.claim(["b"])
        self.execute(statements.dead_letter(self.schema), ([rows[0][0]], token_b, ["x"]))
        stats = self.execute(statements.stats(self.schema))
        self.assertEqual([(s[0], s[1], s[2], s[4]) for s in stats], [("a", 2, 1, 0), ("b", 0, 0, 1)])
        self.assertTrue(100 <= stats[0][3] < 160)
        self.assertIsNone(stats[1][3])

    def test_claim_within_a_budget(self):
        """
        claim_within claims like claim, but the rows past the byte budget
        (in id order, octet_length of the JSON text) come without their
        payload; each row says its size.  With C{first}, the first row
        comes whatever its size; without, nothing past the budget does.
        Given back, a cut row is claimable again, its delivery not counted.
        """
        texts = [json.dumps({"s": "é" * n}, ensure_ascii=False) for n in (10, 20, 5000, 10)]
        ids = [self.emit("t", f"k{i}", text) for i, text in enumerate(texts)]
        conn = self.connect()
        sizes = [len(t.encode()) for t in texts]
        token = str(uuid.uuid4())
        rows = self.execute(statements.claim_within(), (["t"], 10, token, 30.0, sizes[0] + sizes[1], False), conn)
        self.assertEqual([(r[0], r[5], r[6]) for r in rows],
                         [(ids[0], texts[0], sizes[0]), (ids[1], texts[1], sizes[1]),
                          (ids[2], None, sizes[2]), (ids[3], None, sizes[3])])
        self.assertEqual([r[3] for r in rows], [0] * 4)
        self.assertEqual(self.execute(statements.unclaim(), (ids[2:], token), conn), [(ids[2],), (ids[3],)])
        self.assertEqual(self.ack(ids[:2], token, conn), ids[:2])
        token = str(uuid.uuid4())
        rows = self.execute(statements.claim_within(), (["t"], 10, token, 30.0, 100, False), conn)
        self.assertEqual([(r[0], r[3], r[5]) for r in rows], [(ids[2], 0, None), (ids[3], 0, None)])
        self.execute(statements.unclaim(), (ids[2:], token), conn)
        token = str(uuid.uuid4())
        rows = self.execute(statements.claim_within(), (["t"], 10, token, 30.0, 100, True), conn)
        self.assertEqual([(r[0], r[3], r[5]) for r in rows], [(ids[2], 0, texts[2]), (ids[3], 0, None)])

    def test_claim_refuses_bad_arguments(self):
        """
        A claim without a token or with a visibility that is not positive
        is refused; a limit of zero claims nothing.
        """
        import psycopg2

        self.emit("t", "k")
        for visibility in (0.0, -1.0):
            self.assertRaises(psycopg2.errors.InvalidParameterValue, self.claim, ["t"], 10, None, visibility)
        self.assertEqual(self.claim(["t"], limit=0)[1], [])


class KeyShapeTests(OutboxDatabase, unittest.TestCase):
    """
    The claim finds the heads of the keys three ways (few keys, a window of
    the oldest rows, every key): the same answers whatever the shape.
    """

    def setUp(self):
        super().setUp()
        self.clear()

    def fill(self, keys):
        """
        Emit changes with the given keys, in order (one statement).

        @return: their ids.
        """
        rows = self.query(
            'SELECT "hermes".emit(%s, k, jsonb_build_object(\'n\', n))'
            " FROM unnest(%s::text[]) WITH ORDINALITY AS u (k, n) ORDER BY n",
            ("t", keys),
        )
        return [r[0] for r in rows]

    def drain(self, limit):
        """
        Claim and acknowledge until nothing is left.

        @return: the keys in delivery order, per claim.
        """
        claims = []
        while True:
            token, rows = self.claim(["t"], limit=limit)
            if not rows:
                return claims
            claims.append([r[2] for r in rows])
            self.ack([r[0] for r in rows], token)

    def test_one_key(self):
        """
        Many changes of one key: one per claim, in order.
        """
        self.fill(["k"] * 300)
        claims = self.drain(50)
        self.assertEqual(len(claims), 300)
        self.assertTrue(all(c == ["k"] for c in claims))
        self.assertEqual(self.outbox(), [])

    def test_many_keys_many_rows_each(self):
        """
        40 keys (more than the few-keys walk) with 10 changes each, claims
        of 25: every claim holds distinct keys, each key's changes come in
        order, nothing is left.
        """
        keys = [f"k{i % 40}" for i in range(400)]
        ids = self.fill(keys)
        order = []
        while True:
            token, rows = self.claim(["t"], limit=25)
            if not rows:
                break
            self.assertEqual(len({r[2] for r in rows}), len(rows))
            order.extend(r[0] for r in rows)
            self.ack([r[0] for r in rows], token)
        self.assertEqual(sorted(order), ids)
        for key in set(keys):
            mine = [i for i, k in zip(ids, keys) if k == key]
            self.assertEqual([i for i in order if i in set(mine)], mine)

    def test_heads_beyond_the_window(self):
        """
        When the oldest rows all belong to a key whose head is in flight,
        heads of other keys further back are still found.
        """
        hot = self.fill(["hot"] * 300)
        cold = self.fill([f"c{i}" for i in range(40)])
        holder, rows = self.claim(["t"], limit=1)
        self.assertEqual([r[0] for r in rows], [hot[0]])
        _, rows = self.claim(["t"], limit=5)
        self.assertEqual([r[0] for r in rows], cold[:5])

    def test_in_flight_heads_of_many_keys(self):
        """
        With every key's head in flight nothing is claimable, however many
        keys; acknowledging one head frees exactly its key.
        """
        ids = self.fill([f"k{i % 60}" for i in range(600)])
        holder, rows = self.claim(["t"], limit=100)
        self.assertEqual([r[0] for r in rows], ids[:60])
        self.assertEqual(self.claim(["t"], limit=100)[1], [])
        self.ack([ids[7]], holder)
        self.assertEqual([r[0] for r in self.claim(["t"], limit=100)[1]], [ids[67]])


class KeyShapeBoundsTests(KeyShapeTests):
    """
    The same, with claims finding their window as on PostgreSQL 11 to 14.
    """

    claim_window = "bounds"


class ConcurrentClaimTests(OutboxDatabase, unittest.TestCase):
    """
    Three claimers and two writers at once, each on its own connection in
    its own thread.
    """

    def test_per_key_order_across_claimers(self):
        """
        While writers keep emitting on 15 keys, three claimers claim and
        acknowledge: every change is delivered once, per key in id order,
        and a key's next change is claimed only after its previous one's
        acknowledgement began.
        """
        keys = [f"key-{i}" for i in range(15)]
        per_writer = 150
        log = []
        lock = threading.Lock()
        writing = threading.Event()
        writing.set()

        def write(seed):
            conn = self.connect()
            ids = []
            for i in range(per_writer):
                ids.append(self.emit("t", keys[(seed + i * 7) % len(keys)], conn=conn))
            return ids

        def consume():
            conn = self.connect()
            idle = 0
            while idle < 20:
                token, rows = self.claim(["t"], limit=7, conn=conn)
                with lock:
                    log.extend(("claimed", r[0], r[2]) for r in rows)
                if not rows:
                    idle = idle + 1 if not writing.is_set() else 0
                    time.sleep(0.005)
                    continue
                with lock:
                    log.extend(("acking", r[0], r[2]) for r in rows)
                self.ack([r[0] for r in rows], token, conn=conn)

        writers = [in_thread(write, seed) for seed in (0, 3)]
        consumers = [in_thread(consume) for _ in range(3)]
        written = sorted(i for ids in join_threads(self, writers) for i in ids)
        writing.clear()
        join_threads(self, consumers)

        claimed = [(i, k) for event, i, k in log if event == "claimed"]
        self.assertEqual(sorted(i for i, _ in claimed), written)
        acking = set()
        last = {}
        for event, change, key in log:
            if event == "acking":
                acking.add(change)
                continue
            previous = last.get(key)
            if previous is not None:
                self.assertLess(previous, change)
                self.assertIn(previous, acking, f"{key}: {change} claimed before {previous} was acknowledged")
            last[key] = change
        self.assertEqual(self.outbox(), [])
