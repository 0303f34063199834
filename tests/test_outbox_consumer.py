"""
The outbox consumer on a real database (one of its own per class, on the
shared throwaway primary): drain, wake-ups, per-key order across consumers
and concurrent writers, retries and dead letters, visibility: extension for a
slow processor and reclaim from a dead consumer, stop giving back what was
queued.
"""

import threading
import uuid

from twisted.internet import defer, threads
from twisted.logger import LogLevel, formatEvent
from twisted.trial import unittest

from hermes_tx.components import Component
from hermes_tx.outcomes import Reject, Retry, Unavailable
from tests.support.outbox import OutboxDatabase
from tests.support.shared import capture_log, sleep, wait_until


class Recorder(Component):
    """
    Records every change it is given, as (key, data["n"], attempts); a
    script per key may make it raise or wait.
    """

    def __init__(self, everyone=None, **kwargs):
        super().__init__(**kwargs)
        self.seen = []
        self.everyone = everyone  # a list shared by several recorders, or None
        self.script = {}  # key -> list of exceptions / Deferreds, used in turn

    def execute(self, change):
        if change.kind != "change":
            return None
        self.seen.append((change.key, change.data.get("n"), change.attempts))
        if self.everyone is not None:
            self.everyone.append((change.key, change.data.get("n")))
        steps = self.script.get(change.key)
        if steps:
            step = steps.pop(0)
            if isinstance(step, Exception):
                raise step
            return step
        return None

    def by_key(self):
        keys = {}
        for key, n, _ in self.seen:
            keys.setdefault(key, []).append(n)
        return keys


class _Consuming(OutboxDatabase):
    def emit(self, topic, key, n):
        if getattr(self, "_writing", None) is None:
            self._writing = self.connect()
        cur = self._writing.cursor()
        cur.execute("SELECT hermes.emit(%s, %s, jsonb_build_object('n', %s::int))", (topic, key, n))

    def emit_many(self, topic, keys, per_key):
        """
        Emit C{per_key} changes for each key, numbered in order, in
        transactions of 1000.
        """
        conn = self.connect()
        cur = conn.cursor()
        rows = [(k, n) for n in range(per_key) for k in keys]
        for i in range(0, len(rows), 1000):
            chunk = rows[i:i + 1000]
            cur.execute("BEGIN")
            cur.executemany("SELECT hermes.emit(%s, %s, jsonb_build_object('n', %s::int))",
                            [(topic, k, n) for k, n in chunk])
            cur.execute("COMMIT")

    def rows(self, table="outbox", topic=None):
        """
        @return: C{(id, key, attempts, claimed)} of the rows (of C{topic})
            in the outbox or its dead letters (where C{claimed} is False).
        """
        claimed = "claim_token IS NOT NULL" if table == "outbox" else "false"
        if getattr(self, "_looking", None) is None:
            self._looking = self.connect()  # one connection per test for looking
        cur = self._looking.cursor()
        cur.execute(f"SELECT id, key, attempts, {claimed} FROM hermes.{table}"
                    " WHERE %s IS NULL OR topic = %s ORDER BY id", (topic, topic))
        return cur.fetchall()

    def start(self, topics=("t",), processor=None, **kwargs):
        processor = processor or Recorder()
        client, consumer = self.start_consumer(topics, processor, **kwargs)
        return client, consumer, processor


class DrainTests(_Consuming, unittest.TestCase):
    @defer.inlineCallbacks
    def test_backlog_in_order_per_key_then_empty(self):
        """
        A backlog over 50 keys drains completely, each key's changes in the
        order written, nothing twice, and the outbox is empty after.
        """
        keys = [f"key-{i}" for i in range(50)]
        self.emit_many("t", keys, 20)
        client, consumer, recorder = self.start(batch_size=100)
        yield wait_until(lambda: len(recorder.seen) >= 1000, timeout=30, what="1000 changes")
        yield wait_until(lambda: not self.rows(), timeout=10, what="an empty outbox")
        # The last acknowledgement's answer may still be on its way.
        yield wait_until(lambda: consumer.ledger.counts["acked"] == 1000, timeout=10, what="1000 acks")
        self.assertEqual(len(recorder.seen), 1000)
        for key, ns in recorder.by_key().items():
            self.assertEqual(ns, list(range(20)), key)
        self.assertEqual(consumer.claimed, {"t": 1000})
        self.assertEqual(list(consumer.ledger.in_flight), [])

    @defer.inlineCallbacks
    def test_woken_without_waiting_for_the_poll(self):
        """
        A change written while the consumer is idle arrives through the
        wake-up, long before the next poll; other topics are not claimed.
        """
        client, consumer, recorder = self.start(topics=["woken"], poll_interval=60)
        yield wait_until(lambda: consumer.is_consuming, what="consuming")
        yield sleep(0.2)
        self.emit("other-topic", "k", 1)
        self.emit("woken", "k", 2)
        yield wait_until(lambda: recorder.seen, timeout=3, what="the change")
        self.assertEqual(recorder.seen, [("k", 2, 0)])
        # Its acknowledgement follows (the other topic's row stays).
        yield wait_until(lambda: len(self.rows()) == 1, timeout=3, what="the acknowledgement")
        self.assertEqual(self.rows(topic="other-topic")[0][1], "k")


class ByteBoundTests(_Consuming, unittest.TestCase):
    @defer.inlineCallbacks
    def test_big_changes_flow_within_a_small_bound(self):
        """
        With C{max_in_flight_bytes} of 256 KiB, changes of about 100 KB
        (eight keys, five each) and one of 1.5 MB in their midst flow:
        every change once, in order per key, each on its first delivery
        (the rows a claim cut were given back, their delivery not
        counted); whenever the processor is given a change, the payloads
        held stay within the bound, unless that one change alone is held.
        """
        bound = 256 << 10
        conn = self.connect()
        cur = conn.cursor()
        emitted = []
        for n in range(5):
            for k in range(8):
                emitted.append((f"key-{k}", n, 100000))
            if n == 2:
                emitted.append(("big", 0, 1500000))
        cur.execute("BEGIN")
        cur.executemany("SELECT hermes.emit('t', %s, jsonb_build_object('n', %s::int, 's', repeat('x', %s)))",
                        emitted)
        cur.execute("COMMIT")
        held = []

        class Measuring(Recorder):
            def execute(self, change):
                ledger = consumer.ledger
                held.append((ledger.held, len(ledger.in_flight)))
                return Recorder.execute(self, change)

        client, consumer, recorder = self.start(processor=Measuring(), max_in_flight_bytes=bound)
        yield wait_until(lambda: len(recorder.seen) >= len(emitted), timeout=30, what="every change")
        yield wait_until(lambda: not self.rows(), timeout=10, what="an empty outbox")
        self.assertEqual(len(recorder.seen), len(emitted))
        keys = recorder.by_key()
        self.assertEqual(keys.pop("big"), [0])
        self.assertEqual(keys, {f"key-{k}": list(range(5)) for k in range(8)})
        self.assertEqual({attempts for _, _, attempts in recorder.seen}, {0})
        self.assertEqual([h for h in held if h[0] > bound and h[1] > 1], [])
        self.assertIn(1, [count for size, count in held if size > bound])
        self.assertEqual(consumer.budget.bound, bound)


class RetryTests(_Consuming, unittest.TestCase):
    @defer.inlineCallbacks
    def test_retry_waits_and_keeps_the_key_in_order(self):
        """
        Retry releases the change (attempt counted); while it waits, the
        key's next change is not handed out; other keys go on.
        """
        log = capture_log(self)
        recorder = Recorder()
        recorder.script["a"] = [Retry("not yet", retry_after=0.5)]
        for n in range(3):
            self.emit("retry", "a", n)
            self.emit("retry", "b", n)
        client, consumer, _ = self.start(["retry"], processor=recorder, poll_interval=0.1)
        yield wait_until(lambda: len(recorder.seen) >= 7, timeout=15, what="7 deliveries")
        yield wait_until(lambda: not self.rows(topic="retry"), timeout=10, what="an empty outbox")
        self.assertEqual(recorder.by_key(), {"a": [0, 0, 1, 2], "b": [0, 1, 2]})
        a = [s for s in recorder.seen if s[0] == "a"]
        self.assertEqual([s[2] for s in a], [0, 1, 0, 0])  # attempts
        self.assertEqual(consumer.ledger.counts["released"], 1)
        self.assertTrue(any("not delivered" in formatEvent(e) for e in log))

    @defer.inlineCallbacks
    def test_a_key_catches_up_in_runs(self):
        """
        Few keys with many changes each: claims bring runs of a key's
        changes, the processor still gets
        each key's changes one at a time and in order, a failure in the
        middle of a run sends what follows it back, and the key catches up
        behind its retry.
        """
        recorder = Recorder()
        recorder.script["a"] = [None] * 5 + [RuntimeError("boom")]
        recorder.script["b"] = [Retry("not yet")] + [None] * 19 + [Retry("again")]
        self.emit_many("runs", ["a", "b", "c"], 40)
        client, consumer, _ = self.start(["runs"], processor=recorder, poll_interval=0.1,
                                         retry_delay=0.1, max_retry_delay=0.1)
        claims = []  # the claims that brought changes
        claimed = consumer.pacer.claimed
        consumer.pacer.claimed = lambda: (claims.append(1), claimed())
        yield wait_until(lambda: not self.rows(topic="runs"), timeout=30, what="an empty outbox")
        self.assertEqual(recorder.by_key(), {
            "a": list(range(5)) + [5] + list(range(5, 40)),
            "b": [0] + list(range(19)) + [19] + list(range(19, 40)),
            "c": list(range(40)),
        })
        self.assertEqual(consumer.ledger.counts["released"], 3)
        # one change of a key per claim would take at least 40 claims
        self.assertLess(len(claims), 40)
        self.assertEqual(consumer.runs.waiting, 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_dead_letters_after_max_attempts_and_at_once_on_reject(self):
        """
        A change that keeps failing moves to the dead letters after
        max_attempts deliveries (logged, counted); a rejected one at once;
        the key's next change then goes on.
        """
        log = capture_log(self)
        recorder = Recorder(backoff_limit=1)
        recorder.script["bad"] = [Retry("down")] * 3
        recorder.script["rejected"] = [Reject("400 mapping error")]
        self.emit("dead", "bad", 1)
        self.emit("dead", "bad", 2)
        self.emit("dead", "rejected", 1)
        self.emit("dead", "rejected", 2)
        client, consumer, _ = self.start(["dead"], processor=recorder, poll_interval=0.1,
                                         max_attempts=3, retry_delay=0.1, max_retry_delay=0.1)
        yield wait_until(lambda: len(self.rows("dead_letters")) == 2, timeout=20, what="2 dead")
        yield wait_until(lambda: not self.rows(topic="dead"), timeout=10, what="an empty outbox")
        self.assertEqual(recorder.by_key(), {"bad": [1, 1, 1, 2], "rejected": [1, 2]})
        dead = self.rows("dead_letters")
        self.assertEqual(sorted(r[1] for r in dead), ["bad", "rejected"])
        self.assertEqual(consumer.ledger.counts["dead"], 2)
        lines = [formatEvent(e) for e in log if e.get("log_level") == LogLevel.warn
                 and "dead letters" in formatEvent(e)]
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(any("after 3 attempt(s)" in line for line in lines), lines)


class BreakerTests(_Consuming, unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_dependency_down_pauses_claims_and_gives_back(self):
        """
        Everything failing because the other side is down (the processor
        raises Unavailable): after five failures in a row the processor's
        circuit opens, the consumer gives back what it holds (attempts not
        counted) and claims nothing more until the probe, whose failure is
        not counted either (the dependency is at fault, not the change); the
        dependency back, everything is delivered, in order per key.
        """
        down = [True]

        class Flaky(Recorder):
            def execute(self, change):
                Recorder.execute(self, change)
                if down[0]:
                    raise Unavailable("connection refused")

        recorder = Flaky(backoff_limit=1)
        keys = [f"k{i}" for i in range(20)]
        self.emit_many("down", keys, 3)
        client, consumer, _ = self.start(["down"], processor=recorder, poll_interval=0.1,
                                         retry_delay=0.05, max_retry_delay=0.05)
        yield wait_until(lambda: recorder.breaker.state == "open", timeout=10, what="the circuit open")
        def nothing_held():
            return not consumer.ledger.in_flight and not any(r[3] for r in self.rows(topic="down"))

        yield wait_until(nothing_held, timeout=5, what="nothing held")
        # Five deliveries opened the circuit; a probe may have followed (on
        # a loaded machine), not counted.
        self.assertIn(len(recorder.seen), (5, 6))
        self.assertEqual(sum(r[2] for r in self.rows(topic="down")), 5)
        yield wait_until(lambda: len(recorder.seen) >= 7, timeout=10, what="two probes")
        yield wait_until(nothing_held, timeout=5, what="nothing held")
        self.assertEqual(sum(r[2] for r in self.rows(topic="down")), 5)
        down[0] = False
        yield wait_until(lambda: not self.rows(topic="down"), timeout=20, what="an empty outbox")
        self.assertEqual(recorder.breaker.state, "closed")
        for key, ns in recorder.by_key().items():
            self.assertEqual(sorted(set(ns)), [0, 1, 2], key)
            self.assertEqual(ns, sorted(ns), key)


class HungBackendTests(_Consuming, unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_frozen_backend_is_left_within_the_liveness_timeout(self):
        """
        The consumer's backend is frozen (SIGSTOP) while the consumer is
        idle: the liveness probe (or the deadline of whatever query is in
        flight) declares the connection dead within liveness_timeout, and a
        change written meanwhile is delivered on a new connection.
        """
        import os
        import signal

        recorder = Recorder()
        client, consumer, _ = self.start(["hung"], processor=recorder, liveness_timeout=2.0,
                                         liveness_interval=0.5, application_name="hung-outbox")
        yield wait_until(lambda: consumer.is_consuming, what="consuming")
        (frozen,) = self.cluster.backend_pids("hung-outbox")
        os.kill(frozen, signal.SIGSTOP)
        self.addCleanup(lambda: os.kill(frozen, signal.SIGCONT))
        self.emit("hung", "k", 1)
        # Without a deadline nothing would ever come (the frozen backend
        # holds the connection open): the bound is generous on purpose.
        yield wait_until(lambda: recorder.seen, timeout=8, what="the change on a new connection")
        self.assertEqual(recorder.seen, [("k", 1, 0)])
        self.assertEqual(len([p for p in self.cluster.backend_pids("hung-outbox") if p != frozen]), 1)
        self.assertEqual(consumer.reconnects, 1)


class OlderOutboxTests(_Consuming, unittest.TestCase):
    install_outbox = False

    @defer.inlineCallbacks
    def test_an_older_outbox_names_the_upgrade(self):
        """
        An outbox installed by an older hermes_tx (version 8: no
        claim_runs()): each claim fails, and the line says how to upgrade.
        """
        import psycopg2

        from hermes_tx.outbox.schema import install

        conn = psycopg2.connect(self.dsn)
        try:
            install(conn, target=8)
        finally:
            conn.close()
        log = capture_log(self)
        self.start(["t"])
        yield wait_until(lambda: any("reconnecting in" in formatEvent(e) for e in log), timeout=10,
                         what="a lost claim")
        line = next(formatEvent(e) for e in log if "reconnecting in" in formatEvent(e))
        self.assertIn("UndefinedFunction: function hermes.claim_runs(text[], integer, uuid, double precision)"
                      " does not exist (is the outbox in schema 'hermes' older than this hermes_tx?"
                      " hermes-tx install upgrades it); reconnecting in", line)


class PermanentErrorTests(_Consuming, unittest.TestCase):
    @defer.inlineCallbacks
    def test_missing_grants_back_off_with_one_clear_line(self):
        """
        A consumer whose role may connect and LISTEN but not claim: each
        connection fails at its first claim, the run never counts as ready,
        so reconnects back off (0.1, 0.2, 0.4 ... s: a handful in 3 s, not
        thirty), each loss one line naming the cause, and /ready says the
        consumer is waiting.
        """
        from hermes_tx.client import Client
        from hermes_tx.connectors import PostgresConnector
        from hermes_tx.outbox.consumer import OutboxConsumer
        from hermes_tx.status.readiness import readiness

        log = capture_log(self)
        self.query("DROP ROLE IF EXISTS hermes_nogrants")
        self.query("CREATE ROLE hermes_nogrants LOGIN")
        self.addCleanup(self.query, "DROP ROLE IF EXISTS hermes_nogrants")
        dsn = self.cluster.dsn(self.dbname, user="hermes_nogrants")
        client = Client(self.dsn, role_check_interval=0.5)
        consumer = OutboxConsumer(PostgresConnector(dsn), ["t"], backoff_limit=16)
        client.add_outbox(consumer)
        client.add_processor(Recorder())
        client.startService()
        self.addCleanup(lambda: client.stopService() if client.running else None)
        yield sleep(3.0)
        lines = [formatEvent(e) for e in log if "reconnecting in" in formatEvent(e)]
        delays = [float(line.rsplit("reconnecting in ", 1)[1].split()[0]) for line in lines]
        # Growing (0.1, 0.2, 0.4 ... with jitter), never reset: a handful
        # in 3 s, not thirty.
        self.assertTrue(2 <= len(delays) <= 6, delays)
        self.assertEqual(delays, sorted(delays))
        self.assertGreater(delays[-1], 2.5 * delays[0])
        self.assertIn("InsufficientPrivilege: permission denied for schema hermes: role "
                      "'hermes_nogrants' needs USAGE ON SCHEMA hermes (to consume the outbox: "
                      "hermes-tx install --grant-consumer hermes_nogrants)", lines[0])
        ready, details = readiness(client)
        self.assertFalse(ready)
        self.assertRegex(details["reason"], "outbox consumer is (waiting|connecting)")
        # /metrics counts each loss (hermes_reconnects_total{source="outbox"}).
        from hermes_tx.status.metrics import ClientCollector

        [reconnects] = [m for m in ClientCollector(client).collect() if m.name == "hermes_reconnects"]
        counted = {s.labels["source"]: s.value for s in reconnects.samples if s.name.endswith("_total")}
        self.assertEqual(counted, {"outbox": consumer.reconnects})
        self.assertGreaterEqual(consumer.reconnects, len(lines))


class VisibilityTests(_Consuming, unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_slow_processor_keeps_its_claim(self):
        """
        A processor slower than the visibility timeout: its live consumer
        extends the claim, so a second consumer does not take the change.
        """
        slow = defer.Deferred()
        first = Recorder()
        first.script["k"] = [slow]
        self.emit("t", "k", 1)
        self.start(processor=first, visibility_timeout=1.0, poll_interval=0.1)
        yield wait_until(lambda: first.seen, what="the first delivery")
        second = Recorder()
        self.start(processor=second, visibility_timeout=1.0, poll_interval=0.1)
        yield sleep(2.5)
        self.assertEqual(second.seen, [])
        slow.callback(None)
        yield wait_until(lambda: not self.rows(), timeout=5, what="acknowledged")
        self.assertEqual(second.seen, [])

    @defer.inlineCallbacks
    def test_claims_of_a_dead_consumer_come_back(self):
        """
        Claims made by a consumer that died (made here by hand, with a
        short visibility) are delivered by a live one once they expire,
        with the attempt counted.
        """
        self.emit("t", "orphan", 1)
        cur = self.connect().cursor()
        cur.execute("SELECT id FROM hermes.claim(%s, %s, %s, %s)", (["t"], 10, str(uuid.uuid4()), 1.0))
        self.assertEqual(len(cur.fetchall()), 1)
        client, consumer, recorder = self.start(poll_interval=0.1)
        yield sleep(0.5)
        self.assertEqual(recorder.seen, [])
        yield wait_until(lambda: recorder.seen, timeout=5, what="the reclaimed change")
        self.assertEqual(recorder.seen, [("orphan", 1, 1)])


class StopTests(_Consuming, unittest.TestCase):
    @defer.inlineCallbacks
    def test_stop_gives_back_what_was_queued(self):
        """
        Stopping with claimed changes still queued gives them back at once,
        their attempt not counted; what was processed is acknowledged.
        """
        gate = defer.Deferred()
        recorder = Recorder(shutdown_timeout=5)
        recorder.script["k0"] = [gate]
        for i in range(10):
            self.emit("t", f"k{i}", 1)
        # No pacing: all ten are claimed at once, whatever the rate.
        client, consumer, _ = self.start(processor=recorder, claim_horizon=None)
        yield wait_until(lambda: recorder.seen and len(consumer.ledger.in_flight) == 10,
                         what="10 claimed, one in progress")
        stopping = client.stopService()
        gate.callback(None)
        yield stopping
        rows = self.rows()
        self.assertEqual([r[1] for r in rows], [f"k{i}" for i in range(1, 10)])
        self.assertEqual({(r[2], r[3]) for r in rows}, {(0, False)})


class StopDuringClaimTests(_Consuming, unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_claim_answered_after_the_stop_is_given_back(self):
        """
        A claim still on its way when the consumer stops (here held up by
        a table lock) is given back once it answers, its attempt not
        counted: the keys are not blocked until the claims expire.
        """
        for i in range(5):
            self.emit("t", f"k{i}", 1)
        locker = self.connect(autocommit=False)
        locker.cursor().execute("LOCK TABLE hermes.outbox IN EXCLUSIVE MODE")
        client, consumer, recorder = self.start(stats_interval=None, poll_interval=60)
        # connected, its first claim waiting for the lock (so not ready yet)
        yield wait_until(lambda: consumer.state == "starting" and consumer.supervisor.run.pump.state == "claiming",
                         what="a claim waiting for the lock")
        stopping = client.stopService()
        yield sleep(0.2)
        self.assertNoResult(stopping)
        yield threads.deferToThread(locker.commit)
        yield stopping
        self.assertEqual(recorder.seen, [])
        self.assertEqual([(r[1], r[2], r[3]) for r in self.rows()],
                         [(f"k{i}", 0, False) for i in range(5)])


class SharedWorkTests(_Consuming, unittest.TestCase):
    @defer.inlineCallbacks
    def test_three_consumers_and_concurrent_writers(self):
        """
        Three consumers and four writer threads on 20 keys: every change
        delivered once, each key's changes in the order committed.
        """
        everyone = []  # deliveries of all three, in the order they happened
        recorders = [Recorder(everyone) for _ in range(3)]
        for recorder in recorders:
            self.start(processor=recorder, poll_interval=0.05, batch_size=20)
        keys = [f"w{i}" for i in range(20)]
        counters = {k: 0 for k in keys}
        lock = threading.Lock()

        def writer(seed):
            conn = self.connect()
            cur = conn.cursor()
            for i in range(100):
                key = keys[(seed * 7 + i) % len(keys)]
                cur.execute("BEGIN")
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))
                with lock:
                    n = counters[key]
                    counters[key] += 1
                cur.execute("SELECT hermes.emit('t', %s, jsonb_build_object('n', %s::int))", (key, n))
                cur.execute("COMMIT")

        yield defer.gatherResults([threads.deferToThread(writer, s) for s in range(4)])
        total = sum(counters.values())
        yield wait_until(lambda: sum(len(r.seen) for r in recorders) >= total, timeout=30,
                         what=f"{total} deliveries")
        yield wait_until(lambda: not self.rows(), timeout=10, what="an empty outbox")
        merged = {}
        for key, n in everyone:
            merged.setdefault(key, []).append(n)
        self.assertEqual(len(everyone), total)
        # Per key, across the three consumers, in the order committed.
        for key, ns in merged.items():
            self.assertEqual(ns, list(range(counters[key])), key)
        self.assertTrue(all(r.seen for r in recorders), "the work was not shared")

    @defer.inlineCallbacks
    def test_a_slow_processor_leaves_work_for_others(self):
        """
        A processor taking 10 ms a change: two consumers drain 300 changes
        over 300 keys together, each doing a fair share, though the first
        to wake could claim them all (batch_size 500).
        """
        from twisted.internet import reactor, task

        class Slow(Recorder):
            def execute(self, change):
                Recorder.execute(self, change)
                return task.deferLater(reactor, 0.01, lambda: None)

        recorders = [Slow(), Slow()]
        consumers = [self.start(processor=recorder)[1] for recorder in recorders]
        yield wait_until(lambda: all(c.is_consuming for c in consumers), timeout=10,
                         what="two consumers")
        yield threads.deferToThread(self.emit_many, "t", [f"k{i}" for i in range(300)], 1)
        yield wait_until(lambda: sum(len(r.seen) for r in recorders) >= 300, timeout=30,
                         what="300 deliveries")
        shares = sorted(len(r.seen) for r in recorders)
        self.assertEqual(sum(shares), 300)
        self.assertGreaterEqual(shares[0], 75, f"not shared: {shares}")
