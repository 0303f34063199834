"""
Dead letters that never go back in time: an acknowledged change supersedes
the older dead letters of its key; a retry puts a dead letter back with its
original id, before the newer pending changes of its key, and refuses one
superseded (unless forced), one whose key has a newer change in flight, and
waits for no one (C{retry_dead_letters()} of
C{hermes_tx/outbox/migrations/0003_privileges.sql},
L{hermes_tx.outbox.admin.retry_dead_letters}).

End to end: a table captured, a consumer whose receiver refuses a change,
a newer change of the row delivered, then C{hermes-tx dead-letters
--retry-all}: a per-key ordered processor and the Elasticsearch sink (the
in-process stand-in of C{_bulk}) both end at the database's current row.
"""

import threading
import uuid

from twisted.internet import defer
from twisted.trial import unittest

from hermes_tx.components import Component
from hermes_tx.outbox import admin
from hermes_tx.outbox import sql as statements
from hermes_tx.outbox.capture import capture
from hermes_tx.outcomes import Reject
from hermes_tx.sinks import from_url
from tests.support.fake_es import FakeBulk
from tests.support.httpserver import serve
from tests.support.outbox import OutboxDatabase, in_thread
from tests.test_outbox_cli import hermes_tx
from tests.support.shared import sleep, wait_until


class _DeadLetters(OutboxDatabase):
    def setUp(self):
        super().setUp()
        self.clear()

    def die(self, topic, key, payload="{}"):
        """
        @return: the id of a change emitted, claimed and moved to the dead
            letters.
        """
        change = self.emit(topic, key, payload)
        self.bury(topic, change)
        return change

    def bury(self, topic, change):
        """
        Claim C{change} (the head of its key) and move it to the dead
        letters.
        """
        token, rows = self.claim([topic])
        self.assertIn(change, [r[0] for r in rows])
        self.query(statements.dead_letter(self.schema), ([change], token, ["refused"]))

    def deliver(self, topic, key=None):
        """
        Claim the oldest claimable change of C{topic} (of C{key}) and
        acknowledge it.

        @return: its id.
        """
        token, rows = self.claim([topic])
        rows = [r for r in rows if key is None or r[2] == key]
        self.assertTrue(rows)
        self.ack([rows[0][0]], token)
        return rows[0][0]

    def dead(self):
        return self.query("SELECT id, key, superseded_by FROM hermes.dead_letters ORDER BY id")

    def retry(self, ids=None, topic=None, force=False, conn=None):
        conn = conn or self.connect()
        with conn.cursor() as cur:
            return admin.retry_dead_letters(cur, self.schema, ids, topic, force)


class SupersedeTests(_DeadLetters, unittest.TestCase):
    def test_ack_supersedes_older_dead_letters_of_its_key(self):
        """
        Acknowledging a change marks the older dead letters of its topic
        and key superseded by it; other keys, other topics and newer dead
        letters are left alone.
        """
        old = self.die("t", "k")
        other_key = self.die("t", "other")
        other_topic = self.die("u", "k")
        delivered = self.emit("t", "k")
        self.assertEqual(self.deliver("t", "k"), delivered)
        newer_dead = self.die("t", "k")
        self.assertEqual(self.dead(), [(old, "k", delivered), (other_key, "other", None),
                                       (other_topic, "k", None), (newer_dead, "k", None)])
        later = self.emit("t", "k")
        self.deliver("t", "k")
        self.assertEqual(self.dead()[0], (old, "k", later))
        self.assertEqual(self.dead()[3], (newer_dead, "k", later))

    def bits(self):
        """
        @return: the positions of the set bits of the dead keys' filter.
        """
        [(filter_,)] = self.query("SELECT bits FROM hermes.dead_keys")
        filter_ = bytes(filter_)
        return {i for i in range(len(filter_) * 8) if filter_[i // 8] >> (i % 8) & 1}

    def bit_of(self, topic, key):
        return self.query("SELECT hermes.dead_key_bit(%s, %s)", (topic, key))[0][0]

    def test_filter_of_dead_keys(self):
        """
        The dead keys' filter gets the bit of every key that gets a dead
        letter (released past max_attempts, or dead-lettered at once);
        purges rebuild it from what is left, and so does a retry that
        leaves none.
        """
        self.query("SELECT hermes.rebuild_dead_keys()")
        self.assertEqual(self.bits(), set())
        self.die("t", "a")
        released = self.emit("t", "b")
        token, _ = self.claim(["t"])
        self.query(statements.release(self.schema), ([released], token, [0], ["x"], 1))
        self.assertEqual(self.bits(), {self.bit_of("t", "a"), self.bit_of("t", "b")})
        with self.connect().cursor() as cur:
            admin.purge_dead_letters(cur, self.schema, [released])
        self.assertEqual(self.bits(), {self.bit_of("t", "a")})
        self.assertEqual(self.query("SELECT empty FROM hermes.dead_keys"), [(False,)])
        self.retry(force=True)
        self.assertEqual(self.bits(), set())
        self.assertEqual(self.query("SELECT empty FROM hermes.dead_keys"), [(True,)])
        for i in range(300):
            self.emit("t", f"many-{i}")
        token, rows = self.claim(["t"], limit=1000)
        self.query(statements.dead_letter(self.schema), ([r[0] for r in rows], token, [None] * len(rows)))
        self.assertTrue({self.bit_of("t", f"many-{i}") for i in range(300)} <= self.bits())

    def test_long_keys(self):
        """
        Any key, however long, can be dead-lettered, superseded and retried
        (the dead letters' index holds a hash of it).
        """
        key = uuid.uuid4().hex * 400  # 12,800 bytes, incompressible enough
        old = self.die("t", key)
        newer = self.emit("t", key)
        self.deliver("t")
        self.assertEqual(self.dead(), [(old, key, newer)])
        self.assertEqual(self.retry(force=True), [(old, admin.RETRIED, None)])


class RetryTests(_DeadLetters, unittest.TestCase):
    def test_original_id_before_the_newer_pending_changes(self):
        """
        A retried dead letter comes back with its id, attempts 0, before
        the changes of its key written since (not delivered yet), which
        keep their ids; a wake-up is sent.
        """
        old = self.die("t", "k")
        newer = self.emit("t", "k")
        listener = self.connect()
        listener.cursor().execute(statements.listen(self.schema))
        self.assertEqual(self.retry([old]), [(old, admin.RETRIED, None)])
        self.assertEqual(self.outbox("id, attempts, claim_token"), [(old, 0, None), (newer, 0, None)])
        self.assertEqual(self.dead(), [])
        listener.poll()
        self.assertEqual([n.payload for n in listener.notifies], ["t"])
        self.assertEqual(self.deliver("t"), old)
        self.assertEqual(self.deliver("t"), newer)

    def test_superseded_refused_unless_forced(self):
        old = self.die("t", "k")
        newer = self.emit("t", "k")
        self.deliver("t")
        self.assertEqual(self.retry(), [(old, admin.SUPERSEDED, newer)])
        self.assertEqual(self.outbox("id"), [])
        self.assertEqual(self.retry(force=True), [(old, admin.RETRIED, None)])
        self.assertEqual(self.outbox("id"), [(old,)])

    def test_newer_change_in_flight_refused(self):
        """
        While a newer change of the key is in flight the dead letter stays
        (put back, it would be delivered after it), forced or not.
        """
        old = self.die("t", "k")
        newer = self.emit("t", "k")
        token, _ = self.claim(["t"])
        self.assertEqual(self.retry(force=True), [(old, admin.IN_FLIGHT, newer)])
        self.ack([newer], token)
        self.assertEqual(self.retry(), [(old, admin.SUPERSEDED, newer)])

    def test_older_change_in_flight_is_no_reason(self):
        """
        Two dead letters of a key: the older retried and in flight, the
        newer can be retried too: it waits behind the older.
        """
        first = self.die("t", "k")
        second = self.die("t", "k")
        self.assertEqual(self.retry([first]), [(first, admin.RETRIED, None)])
        token, rows = self.claim(["t"])
        self.assertEqual([r[0] for r in rows], [first])
        self.assertEqual(self.retry([second]), [(second, admin.RETRIED, None)])
        self.assertEqual(self.claim(["t"])[1], [])
        self.ack([first], token)
        self.assertEqual(self.deliver("t"), second)

    def test_missing_and_topic(self):
        a = self.die("a", "k")
        b = self.die("b", "k")
        self.assertEqual(self.retry([a, b, 999999], topic="a"),
                         [(a, admin.RETRIED, None), (b, admin.MISSING, None),
                          (999999, admin.MISSING, None)])
        self.assertEqual(self.retry([a]), [(a, admin.MISSING, None)])

    def test_busy_while_the_key_is_written(self):
        """
        A transaction writing the key (emit's lock) makes the retry say
        busy at once, not wait (it could deadlock with that transaction).
        """
        old = self.die("t", "k")
        writer = self.connect(autocommit=False)
        writer.cursor().execute("SELECT hermes.emit('t', 'k', '{}')")
        self.assertEqual(self.retry(), [(old, admin.BUSY, None)])
        writer.commit()
        self.assertEqual(self.retry(), [(old, admin.RETRIED, None)])

    def test_busy_while_the_keys_rows_are_locked(self):
        old = self.die("t", "k")
        newer = self.emit("t", "k")
        locker = self.connect(autocommit=False)
        locker.cursor().execute("SELECT 1 FROM hermes.outbox WHERE id = %s FOR UPDATE", (newer,))
        self.assertEqual(self.retry(), [(old, admin.BUSY, None)])
        locker.rollback()
        self.assertEqual(self.retry(), [(old, admin.RETRIED, None)])

    def test_a_claim_skips_the_key_while_a_retry_commits(self):
        """
        While a retry's transaction is open, a claim takes nothing of the
        key (the newer pending row it may see is locked); once it commits,
        the retried change comes first.
        """
        old = self.die("t", "k")
        newer = self.emit("t", "k")
        other = self.emit("t", "other")
        retrying = self.connect(autocommit=False)
        self.assertEqual(self.retry(conn=retrying), [(old, admin.RETRIED, None)])
        _, rows = self.claim(["t"])
        self.assertEqual([r[0] for r in rows], [other])
        retrying.commit()
        self.assertEqual(self.deliver("t", "k"), old)
        self.assertEqual(self.deliver("t", "k"), newer)


class CaptureLockTests(_DeadLetters, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.query("DROP TABLE IF EXISTS public.locked_items")
        self.query("CREATE TABLE public.locked_items (id int PRIMARY KEY, v text)")
        capture(self.connect(), "public.locked_items", "items", self.schema)

    def test_a_captured_write_of_a_dead_key_waits_for_the_retry(self):
        """
        A captured write of a key with a dead letter takes emit's lock, so
        it waits for a retry of that key in progress, and its change comes
        after the retried one.
        """
        self.query("INSERT INTO public.locked_items VALUES (1, 'a')")
        [(old,)] = self.outbox("id")
        self.bury("items", old)
        retrying = self.connect(autocommit=False)
        self.assertEqual(self.retry(conn=retrying), [(old, admin.RETRIED, None)])
        thread, result = in_thread(self.query, "UPDATE public.locked_items SET v = 'b' WHERE id = 1")
        thread.join(0.5)
        self.assertTrue(thread.is_alive(), "the write did not wait for the retry")
        retrying.commit()
        thread.join(10)
        self.assertNotIn("error", result)
        self.assertEqual([r[0] for r in self.outbox("id")][0], old)
        self.assertEqual(len(self.outbox("id")), 2)

    def test_other_keys_do_not_wait(self):
        self.query("INSERT INTO public.locked_items VALUES (1, 'a')")
        self.bury("items", self.outbox("id")[0][0])
        retrying = self.connect(autocommit=False)
        self.retry(conn=retrying)
        done = threading.Event()
        thread, result = in_thread(lambda: (self.query("INSERT INTO public.locked_items VALUES (2, 'x')"),
                                            done.set()))
        self.assertTrue(done.wait(10), "a write of another key waited")
        retrying.rollback()


class KeyState(Component):
    """
    A receiver that applies changes in order per key with no version check:
    the row's data (C{data["new"]}, None for a DELETE) per key.  It refuses
    (L{Reject}) the changes whose new row has C{v} in C{refuse}.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rows = {}
        self.applied = []
        self.refuse = set()

    def execute(self, change):
        if change.kind != "change":
            return None
        new = change.data["new"]
        if new is not None and new.get("v") in self.refuse:
            raise Reject(f"refusing {new['v']}")
        self.rows[change.key] = new
        self.applied.append((change.id, change.key, new and new.get("v")))
        return None


class EndToEndTests(OutboxDatabase, unittest.TestCase):
    """
    A captured table, an in-process consumer (a per-key ordered processor,
    or the Elasticsearch sink), and C{hermes-tx dead-letters} as operators
    run it.
    """

    def setUp(self):
        super().setUp()
        self.clear()
        self.query("DROP TABLE IF EXISTS public.river")
        self.query("CREATE TABLE public.river (id int PRIMARY KEY, v text)")
        capture(self.connect(), "public.river", "river", self.schema)

    def current(self):
        return {str(i): {"id": i, "v": v} for i, v in self.query("SELECT id, v FROM public.river")}

    def outbox_empty(self):
        return not self.outbox("id")

    def dead_count(self):
        return self.query("SELECT count(*) FROM hermes.dead_letters")[0][0]

    def retry_all(self, *extra):
        return hermes_tx("dead-letters", "--retry-all", *extra, "--dsn", self.dsn)

    @defer.inlineCallbacks
    def test_ordered_processor_ends_at_the_current_row(self):
        """
        A change refused for good, a newer change of the row delivered,
        then C{--retry-all}: the dead letter is refused (superseded), one
        line; the receiver keeps the current row.
        """
        state = KeyState()
        state.refuse = {"old"}
        self.start_consumer(["river"], state, poll_interval=0.1)
        self.query("INSERT INTO public.river VALUES (1, 'old'), (2, 'x')")
        yield wait_until(lambda: self.dead_count() == 1 and self.outbox_empty(), what="a dead letter")
        self.query("UPDATE public.river SET v = 'new' WHERE id = 1")
        yield wait_until(self.outbox_empty, what="the newer change delivered")
        status, out, err = yield defer.maybeDeferred(self.retry_all)
        self.assertEqual(status, 1, err)
        self.assertEqual(out, "retried 0 dead letters\n")
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn("--force", err)
        yield sleep(0.5)
        self.assertEqual(state.rows, self.current())
        self.assertEqual(self.dead_count(), 1)

    @defer.inlineCallbacks
    def test_retry_before_the_newer_change_is_delivered(self):
        """
        The receiver refused a change; the consumer is stopped; the row
        changes again; the dead letter is retried: it is delivered first,
        then the newer change: the receiver ends at the current row.
        """
        state = KeyState()
        state.refuse = {"old"}
        client, _ = self.start_consumer(["river"], state, poll_interval=0.1)
        self.query("INSERT INTO public.river VALUES (1, 'old')")
        yield wait_until(lambda: self.dead_count() == 1, what="a dead letter")
        yield client.stopService()
        self.query("UPDATE public.river SET v = 'new' WHERE id = 1")
        status, out, err = yield defer.maybeDeferred(self.retry_all)
        self.assertEqual((status, out, err), (0, "retried 1 dead letter\n", ""))
        again = KeyState()
        again.rows = state.rows
        self.start_consumer(["river"], again, poll_interval=0.1)
        yield wait_until(self.outbox_empty, what="both delivered")
        self.assertEqual([v for _, _, v in again.applied], ["old", "new"])
        self.assertEqual(again.rows, self.current())

    @defer.inlineCallbacks
    def test_elasticsearch_ends_at_the_current_row(self):
        """
        Elasticsearch refuses a change (a 400); the row's newer change is
        indexed; C{--retry-all} refuses the dead letter; C{--force} sends
        it with its original id as the version, which Elasticsearch
        ignores (409, done): the document is the current row, at the
        newer change's version.
        """
        refusing = {"on": False}
        es = FakeBulk(script=lambda n: (400, {}) if refusing["on"] else None)
        server = serve(self, es)
        sink = from_url(server.url.replace("http://", "elasticsearch+http://") + "river")
        self.start_consumer(["river"], sink, poll_interval=0.1)
        # A 400 for a batch of one dead-letters its change only once the
        # endpoint has accepted a batch (else the endpoint, not the change,
        # may be at fault: docs/sinks.rst).
        self.query("INSERT INTO public.river VALUES (2, 'accepted')")
        yield wait_until(lambda: "2" in es.live("river"), what="a first batch accepted")
        refusing["on"] = True
        self.query("INSERT INTO public.river VALUES (1, 'old')")
        yield wait_until(lambda: self.dead_count() == 1, what="a dead letter")
        refusing["on"] = False
        self.query("UPDATE public.river SET v = 'new' WHERE id = 1")
        yield wait_until(lambda: "1" in es.live("river") and self.outbox_empty(), what="the newer change")
        status, out, err = yield defer.maybeDeferred(self.retry_all)
        self.assertEqual((status, out), (1, "retried 0 dead letters\n"))
        [(old, newer)] = self.query("SELECT id, superseded_by FROM hermes.dead_letters")
        self.assertIsNotNone(newer)
        status, out, err = yield defer.maybeDeferred(self.retry_all, "--force")
        self.assertEqual((status, out, err), (0, "retried 1 dead letter\n", ""))
        yield wait_until(lambda: self.outbox_empty() and self.dead_count() == 0, what="the forced retry")
        self.assertEqual(es.live("river")["1"], (newer, self.current()["1"]))
        self.assertEqual([a for a in es.applied if a[2] == "1"], [("index", "river", "1", newer)])
