"""
Tests for L{hermes_tx.outbox.run.ConsumeRun} (through its
L{hermes_tx.outbox.consumer.OutboxConsumer}) in memory: a
L{ScriptedConnection} records every statement and the test answers each
(claimed rows, acknowledgements, extensions), and a L{task.Clock} drives
the poll, the extension, the liveness probe and the query deadlines.

When it counts as ready, what makes it claim and what does not (wake-ups of
other topics, a full queue, the processor's open circuit), claims that
never overlap, claiming ahead, keeping claims alive, a dead connection
found by the probe or a deadline, a stop that drains, figures for
C{/metrics}.
"""

import psycopg2
from twisted.internet import task
from twisted.logger import LogLevel, formatEvent
from twisted.trial import unittest

from hermes_tx.exceptions import ConnectionLostError, InvalidConfigurationException
from hermes_tx.outbox import sql as outbox_sql
from hermes_tx.outbox.consumer import OutboxConsumer
from hermes_tx.outbox.run import CUT_LINE_SECONDS, RELEASE_MARGIN, SKIP_AHEAD
from hermes_tx.runtime.backoff import Backoff, backoff_policy
from hermes_tx.runtime.breaker import THRESHOLD, Breaker
from hermes_tx.runtime.queue import EventQueue
from tests.support.fakes import FakeListenConnector, ScriptedConnection
from tests.support.shared import capture_log

DENIED = psycopg2.errors.InsufficientPrivilege("permission denied for function claim")
CUT = psycopg2.errors.QueryCanceled("canceling statement due to statement timeout\n")


def rows(first, count, topic="t1", size=None):
    """
    @return: C{count} claimed rows with ids from C{first}, each of its own
        key, and the bytes of each payload (C{size}: payloads padded to
        that many).
    """
    made = []
    for i in range(first, first + count):
        payload = '{"n": %d}' % i
        if size is not None:
            prefix = '{"n": %d, "s": "' % i
            payload = prefix + "x" * (size - len(prefix) - 2) + '"}'
        made.append((i, topic, f"k{i}", 0, 1000.0, payload, len(payload)))
    return made


class Seen:
    """
    Notes what the consumer's supervisor tells: ready, lost (with the
    delay before the next run).
    """

    def __init__(self):
        self.calls = []

    def run_ready(self, component):
        self.calls.append(("ready",))

    def run_lost(self, component, error, delay):
        self.calls.append(("lost", error, delay))

    @property
    def delays(self):
        return [call[2] for call in self.calls if call[0] == "lost"]


def ids(text):
    return [(int(i),) for i in text.strip("{}").split(",")]


class _Consuming(unittest.TestCase):
    """
    A started consumer of topic C{t1} on fakes.  Unless a test says
    otherwise: no liveness probe and no query deadline, no figures read, a poll once a
    minute, claims of 10, and an in-flight limit (100) the pacer does not
    change.
    """

    timeout = 10  # seconds: nothing here waits for anything real

    def make(self, queue=None, **kwargs):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.log = capture_log(self)
        self.connector = FakeListenConnector(connection_factory=ScriptedConnection)
        self.queue = EventQueue() if queue is None else queue
        # No linger (LingerTests has it): claims follow their reasons at once.
        settings = dict(poll_interval=60.0, batch_size=10, max_in_flight=100, claim_horizon=None,
                        liveness_timeout=None, visibility_timeout=30.0, claim_linger=0,
                        stats_interval=None)
        settings.update(kwargs)
        consumer = self.consumer = OutboxConsumer(self.connector, ["t1", "t2"],
                                                  notif_queue=self.queue, clock=self.clock,
                                                  **settings)
        self.seen = Seen()
        consumer.supervisor.add_observer(self.seen)
        consumer.startService()
        self.addCleanup(self.stop_anyway)
        return consumer

    def stop_anyway(self):
        # A stop waits for the claim in flight: the connection's loss ends
        # the drain of a test that left one unanswered.
        if self.consumer.running:
            stopped = self.consumer.stopService()
            if not stopped.called:
                self.conn.lose()
            self.successResultOf(stopped)

    @property
    def conn(self):
        return self.connector.current

    @property
    def statements(self):
        return self.consumer.statements

    def claims(self):
        return self.conn.waiting(self.statements["claim"])

    def claim(self):
        """
        @return: the one claim waiting for its answer.
        """
        return self.conn.one(self.statements["claim"])

    def answer_claim(self, answer):
        """
        Answer the claim waiting; its changes are queued on the next turn.
        """
        query = self.claim()
        query.answer(answer)
        self.clock.advance(0)
        return query

    def no_claim(self):
        self.assertEqual(self.claims(), [])

    def settle_all(self, how="done"):
        """
        The processor takes every queued change and settles it.
        """
        changes = self.queue.take(len(self.queue))
        for change in changes:
            getattr(change.claim, how)(change)
        return changes

    def write(self, *expected):
        """
        Answer the writes of what is owed, one statement after the other:
        each C{(kind, ids)} expected, every row written.
        """
        for kind, id_array in expected:
            query = self.conn.one(self.statements[kind])
            self.assertEqual(query.params[0], id_array)
            query.answer(ids(id_array))

    def writes(self):
        """
        @return: the writes of what is owed waiting for their answer.
        """
        kinds = ("ack", "release", "dead_letter", "unclaim")
        return [q for q in self.conn.waiting()
                if any(q.statement == self.statements[kind] for kind in kinds)]

    def lines(self, level=LogLevel.warn):
        return [formatEvent(e) for e in self.log if e.get("log_level") == level]


class ReadyTests(_Consuming):
    def test_first_claim(self):
        """
        Working at once: a claim of the consumer's topics, of a batch, with
        a new token and the visibility timeout.
        """
        consumer = self.make()
        self.assertEqual(consumer.state, "starting")
        query = self.claim()
        topics, limit, token, visibility, budget, first = query.params
        self.assertEqual((topics, limit, visibility, budget, first), (["t1", "t2"], 10, 30.0, 32 << 20, True))
        self.assertEqual(len(token), 36)
        self.assertEqual(self.lines(LogLevel.info), ["OutboxConsumer: consuming outbox topics 't1', 't2'"])

    def test_ready_once_a_claim_worked(self):
        """
        Connected, the consumer is C{"starting"} (not consuming, so
        C{/ready} says 503) until a claim of that connection comes back;
        a claim refused ends the connection before it ever was.
        """
        consumer = self.make()
        self.assertEqual(self.seen.calls, [])
        self.assertFalse(consumer.is_consuming)
        self.answer_claim([])
        self.assertEqual(self.seen.calls, [("ready",)])
        self.assertEqual(consumer.state, "consuming")
        self.assertTrue(consumer.is_consuming)
        self.conn.lose()
        self.clock.advance(self.seen.delays[-1])
        self.assertEqual(consumer.state, "starting")
        self.claim().fail(DENIED)
        self.assertEqual(consumer.state, "waiting")

    def test_changes_are_queued(self):
        consumer = self.make()
        self.answer_claim(rows(1, 3) + rows(4, 1, topic="t2"))
        changes = list(self.queue.pending)
        self.assertEqual([(c.id, c.topic, c.key) for c in changes],
                         [(1, "t1", "k1"), (2, "t1", "k2"), (3, "t1", "k3"), (4, "t2", "k4")])
        self.assertEqual(changes[0].data, {"n": 1})
        self.assertEqual(list(consumer.ledger.in_flight), [1, 2, 3, 4])
        self.assertEqual(consumer.claimed, {"t1": 3, "t2": 1})

    def test_claims_that_keep_failing_back_off(self):
        """
        A claim refused every time (a missing grant) loses the connection,
        but the run never counted as ready: the supervisor's delays grow
        (no reconnecting ten times a second).  Once a claim works, the
        next loss retries after the shortest delay again.
        """
        self.make()
        for _ in range(5):
            self.claim().fail(DENIED)
            self.clock.advance(self.seen.delays[-1])
        delays = self.seen.delays
        self.assertEqual(len(delays), 5)
        for shorter, longer in zip(delays, delays[1:]):
            self.assertGreater(longer, shorter * 1.7)
        self.assertEqual([c[0] for c in self.seen.calls], ["lost"] * 5)
        self.assertIs(self.seen.calls[0][1], DENIED)
        self.answer_claim([])
        self.conn.lose()
        self.assertLessEqual(self.seen.delays[-1], 0.1)


class WakeUpTests(_Consuming):
    def test_its_topics_only(self):
        self.make()
        self.answer_claim([])
        self.conn.deliver("other", "t3")
        self.no_claim()
        self.conn.deliver("other", "t2")
        self.assertEqual(len(self.claims()), 1)

    def test_poll(self):
        self.make()
        self.answer_claim([])
        self.clock.advance(59)
        self.no_claim()
        self.clock.advance(1)
        self.answer_claim([])
        self.clock.advance(60)
        self.assertEqual(len(self.claims()), 1)


class LingerTests(_Consuming):
    def test_after_a_quiet_spell_at_once(self):
        self.make(claim_linger=0.01)
        self.answer_claim([])
        self.clock.advance(1.0)
        self.conn.deliver("t1")
        self.assertEqual(len(self.claims()), 1)

    def test_while_changes_flow_a_claim_waits_a_little(self):
        """
        A wake-up within 0.1 s of the last claim: the claim comes
        claim_linger later, and wake-ups meanwhile make no other.
        """
        self.make(claim_linger=0.01)
        self.answer_claim([])
        self.clock.advance(0.02)
        for _ in range(5):
            self.conn.deliver("t1")
        self.no_claim()
        self.clock.advance(0.01)
        self.assertEqual(len(self.claims()), 1)
        self.answer_claim([])
        self.no_claim()

    def test_acknowledgements_linger_too(self):
        self.make(claim_linger=0.01)
        self.answer_claim(rows(1, 2))
        self.settle_all()
        self.clock.advance(0)
        self.write(("ack", "{1,2}"))
        self.no_claim()
        self.clock.advance(0.01)
        self.assertEqual(len(self.claims()), 1)

    def test_acknowledgements_in_a_backlog_claim_at_once(self):
        """
        After acknowledgements, while the last claim brought at least half
        of what it asked for (a backlog whose keys were busy), the next
        claim goes at once; once a claim comes back with less, the
        acknowledgements' claims linger again.
        """
        self.make(claim_linger=0.01, batch_size=10, max_in_flight=10)  # claims of 5
        self.assertEqual(self.claim().params[1], 5)
        self.answer_claim(rows(1, 3))  # 3 of 5
        self.settle_all()
        self.clock.advance(0)
        self.write(("ack", "{1,2,3}"))
        self.answer_claim(rows(4, 1))  # at once; 1 of 5
        self.settle_all()
        self.clock.advance(0)
        self.write(("ack", "{4}"))
        self.no_claim()
        self.clock.advance(0.01)
        self.assertEqual(len(self.claims()), 1)

    def test_a_stop_cancels_the_linger(self):
        consumer = self.make(claim_linger=0.01)
        self.answer_claim([])
        self.conn.deliver("t1")
        self.successResultOf(consumer.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ClaimingTests(_Consuming):
    def test_claims_never_overlap(self):
        """
        Wake-ups and the poll while a claim is in flight: no second claim
        at once, exactly one right after it.
        """
        self.make()
        for _ in range(3):
            self.conn.deliver("t1")
        self.clock.advance(60)
        self.assertEqual(len(self.claims()), 1)
        self.answer_claim([])
        self.assertEqual(len(self.claims()), 1)
        self.answer_claim([])
        self.no_claim()

    def test_full_claim_claims_again(self):
        self.make()
        self.answer_claim(rows(1, 10))
        self.answer_claim(rows(11, 10))
        self.answer_claim(rows(21, 6))
        self.no_claim()
        self.assertEqual(len(self.queue), 26)

    def test_after_a_short_claim_ahead_full_claims_are_not_followed(self):
        """
        A claim made ahead (right after a full one) that comes back short:
        the next SKIP_AHEAD full claims wait for the acknowledgements (or
        the next reason), then full claims are followed again.
        """
        self.make(max_in_flight=1000)
        self.answer_claim(rows(1, 10))
        self.answer_claim(rows(11, 4))  # ahead, and short
        self.no_claim()
        first = 100
        for _ in range(SKIP_AHEAD):
            self.conn.deliver("t1")
            self.answer_claim(rows(first, 10))
            first += 10
            self.no_claim()
        self.conn.deliver("t1")
        self.answer_claim(rows(first, 10))
        self.assertEqual(len(self.claims()), 1)

    def test_a_short_claim_not_ahead_changes_nothing(self):
        self.make()
        self.answer_claim(rows(1, 2))  # not ahead
        self.conn.deliver("t1")
        self.answer_claim(rows(3, 10))
        self.assertEqual(len(self.claims()), 1)

    def test_never_more_than_the_limit(self):
        self.make(max_in_flight=25)
        self.answer_claim(rows(1, 10))
        self.answer_claim(rows(11, 10))
        query = self.claim()
        self.assertEqual(query.params[1], 5)
        query.answer(rows(21, 5))
        self.no_claim()
        self.conn.deliver("t1")
        self.no_claim()

    def test_acknowledgements_claim_next(self):
        """
        Acknowledged changes may have held back the next changes of their
        keys: written, they make the consumer claim.
        """
        consumer = self.make(max_in_flight=10)
        self.answer_claim(rows(1, 10))
        self.no_claim()
        self.settle_all()
        self.clock.advance(0)  # acknowledgements are written on the next turn
        ack = self.conn.one(self.statements["ack"])
        self.assertEqual(ack.params[0], "{1,2,3,4,5,6,7,8,9,10}")
        self.no_claim()
        ack.answer([(i,) for i in range(1, 11)])
        self.assertEqual(consumer.ledger.counts["acked"], 10)
        self.assertEqual(len(self.claims()), 1)

    def test_one_write_sends_every_statement_at_once(self):
        """
        A write of several kinds and claims sends all its statements before
        the first is answered (the connection runs them in turn): one
        waiting for the one before would also wait behind every claim sent
        meanwhile, and the rows owed would stay claimed for those claims to
        walk.  A statement that fails for another reason than a lost
        connection leaves the others' outcomes counted; it is tried again.
        """
        consumer = self.make(max_in_flight=20)
        self.answer_claim(rows(1, 10))
        self.answer_claim(rows(11, 10))  # the claim ahead, another token
        changes = self.queue.take(20)
        for change in changes:
            if change.id not in (5, 15):
                change.claim.done(change)
        failing = [change for change in changes if change.id in (5, 15)]
        failing[0].claim.retry(failing[0], "not yet")  # written at once, with the acks
        failing[1].claim.retry(failing[1], "not yet")  # the next write
        acks = self.conn.waiting(self.statements["ack"])
        self.assertEqual(sorted(q.params[0] for q in acks),
                         ["{1,2,3,4,6,7,8,9,10}", "{11,12,13,14,16,17,18,19,20}"])
        release = self.conn.one(self.statements["release"])
        self.assertEqual(release.params[0], "{5}")
        acks[0].fail(psycopg2.errors.QueryCanceled("canceling statement due to statement timeout"))
        acks[1].answer(ids(acks[1].params[0]))
        release.answer([(5, "retry")])
        self.assertEqual(consumer.ledger.counts["acked"], 9)
        self.assertEqual(consumer.ledger.counts["released"], 1)
        release = self.conn.one(self.statements["release"])
        self.assertEqual(release.params[0], "{15}")
        release.answer([(15, "retry")])
        self.assertEqual(consumer.ledger.counts["released"], 2)
        self.assertEqual(consumer.ledger.owed, 0)  # the failed one waits for its retry
        self.clock.advance(1.0)
        again = self.conn.one(self.statements["ack"])
        self.assertEqual(again.params[0], acks[0].params[0])
        again.answer(ids(again.params[0]))
        self.assertEqual(consumer.ledger.counts["acked"], 18)

    def test_released_changes_are_claimed_when_due(self):
        """
        A released change (and the later changes of its key) is claimable
        once its delay has passed: the consumer claims then, not at the
        next poll.  Changes released together with delays of one band (a
        retry's generation, jittered) get one claim when the last of them
        is due; a longer delay gets its own claim, even when it was asked
        for while a sooner one was pending.
        """
        self.make(max_in_flight=10)
        self.answer_claim(rows(1, 4))
        changes = self.queue.take(4)
        for change in changes[:3]:
            change.claim.retry(change, "not yet")
        changes[3].claim.retry(changes[3], "later", retry_after=2.0)
        self.clock.advance(0)
        delays = []
        for _ in range(2):  # the first, then the three settled while it was written
            release = self.conn.one(self.statements["release"])
            delays.extend(release.params[2])
            release.answer([(i, "retry") for (i,) in ids(release.params[0])])
        self.assertEqual(len(self.claims()), 0)
        first = [d for d in delays if d < 1.0]
        self.assertEqual(len(first), 3)
        self.clock.advance(min(first) + RELEASE_MARGIN - 0.001)
        self.no_claim()
        self.clock.advance(max(first) - min(first) + 0.002)  # (0.001 fell short by a rounding error)
        self.answer_claim([])
        self.clock.advance(2.0 - max(first) - 0.01)
        self.no_claim()
        self.clock.advance(0.02)
        self.assertEqual(len(self.claims()), 1)

    def test_retry_delays_are_the_consumers(self):
        """
        retry_delay and max_retry_delay make a failed change's schedule: the
        first retry after retry_delay (the jitter takes up to a tenth off),
        three times longer each delivery after, never more than
        max_retry_delay; nonsense is refused when the consumer is made.
        """
        self.make(max_in_flight=10, retry_delay=0.04, max_retry_delay=1.0)
        self.answer_claim(rows(1, 1))
        for change in self.queue.take(1):
            change.claim.retry(change, "429")
        self.clock.advance(0)
        release = self.conn.one(self.statements["release"])
        [delay] = release.params[2]
        self.assertTrue(0.036 <= delay <= 0.04, delay)
        policy = self.consumer.ledger.retry_delay
        self.assertTrue(0.108 <= policy(1) <= 0.12)
        self.assertTrue(0.9 <= policy(5) <= 1.0)
        for settings in [dict(retry_delay=0), dict(retry_delay=float("nan")),
                         dict(retry_delay=2.0, max_retry_delay=1.0), dict(max_retry_delay=float("inf"))]:
            error = self.assertRaises(InvalidConfigurationException, OutboxConsumer,
                                      self.connector, ["t1"], **settings)
            self.assertIn("retry_delay must be from 0.01 s to max_retry_delay", str(error))

class QueueTests(_Consuming):
    def test_full_queue_waits_for_room(self):
        """
        No claim while the queue has no room; one when it drains to its
        low water mark, for no more than the room it has.
        """
        self.make(queue=EventQueue(maxsize=10))
        self.answer_claim(rows(1, 10))
        self.no_claim()
        self.conn.deliver("t1")
        self.clock.advance(60)
        self.no_claim()
        self.queue.take(4)
        self.no_claim()
        self.queue.take(1)
        self.assertEqual(self.claim().params[1], 5)

    def test_claims_no_more_than_the_room(self):
        self.make(queue=EventQueue(maxsize=16))
        self.answer_claim(rows(1, 10))
        self.assertEqual(self.claim().params[1], 6)

    def test_no_claim_of_less_than_half_a_batch(self):
        """
        With a batch in flight already, room for less than half a batch
        waits (for acknowledgements, the next reason) instead of claiming
        a few.
        """
        self.make(queue=EventQueue(maxsize=14))
        self.answer_claim(rows(1, 10))
        self.no_claim()
        self.queue.take(10)
        self.no_claim()


class ByteTests(_Consuming):
    """
    The payload bytes in flight stay within C{max_in_flight_bytes}: each
    claim asks for half of what is free, in as many changes as fit at the
    sizes seen; rows past it (their payload cut by the statement) are
    given back; one change bigger than the bound comes alone.
    """

    def asked(self):
        """
        @return: C{(changes, budget, first)} of the claim waiting.
        """
        params = self.claim().params
        return params[1], params[4], params[5]

    def acknowledged(self, id_array):
        self.clock.advance(0)  # the acknowledgements' turn
        self.write(("ack", id_array))

    def cut(self, made, keep):
        """
        @return: C{made} (rows) with the payloads after the first C{keep}
            cut, as the claim statement sends rows past its budget.
        """
        return made[:keep] + [row[:5] + (None,) + row[6:] for row in made[keep:]]

    def test_each_claim_asks_for_half_of_what_is_free(self):
        """
        The first claim may bring half the bound (its first row whatever
        its size); the next one half of what is left, in no more changes
        than fit at the size seen.
        """
        consumer = self.make(max_in_flight_bytes=1000)
        self.assertEqual(self.asked(), (10, 500, True))
        self.answer_claim(rows(1, 4, size=100))
        self.assertEqual(consumer.ledger.held, 400)
        self.assertEqual(consumer.budget.typical, 100)
        self.conn.deliver("t1")
        self.assertEqual(self.asked(), (3, 300, False))

    def test_rows_past_the_budget_are_given_back(self):
        """
        Rows whose payload the statement cut are given back at once (their
        delivery not counted), never queued nor counted as held; the claim
        counts as full, so the next one follows if enough is free.
        """
        consumer = self.make(max_in_flight_bytes=1000)
        self.answer_claim(self.cut(rows(1, 5, size=100), 2))
        self.assertEqual([c.id for c in self.queue.pending], [1, 2])
        self.assertEqual(consumer.ledger.held, 200)
        self.assertEqual(consumer.claimed, {"t1": 2})
        self.write(("unclaim", "{3}"), ("unclaim", "{4,5}"))
        self.assertEqual(self.asked(), (4, 400, False))

    def test_no_claim_while_little_is_free(self):
        """
        With less than a sixteenth of the bound (or one change of the size
        seen) for the next claim, none is made until changes are settled.
        """
        consumer = self.make(max_in_flight_bytes=1600)
        self.answer_claim(rows(1, 4, size=200))  # 800 held
        self.conn.deliver("t1")
        self.answer_claim(rows(5, 3, size=200))  # 1400 held: 100 to claim, less than a change
        self.no_claim()
        self.conn.deliver("t1")
        self.clock.advance(60)
        self.no_claim()
        changes = self.queue.take(7)
        for change in changes[:3]:
            change.claim.done(change)
        self.acknowledged("{1,2,3}")
        self.assertEqual(consumer.ledger.held, 800)
        self.assertEqual(self.asked(), (2, 400, False))

    def test_a_change_bigger_than_the_bound_comes_alone(self):
        """
        Nothing in flight, the first row brings its payload whatever its
        size; then nothing is claimed until it is settled.
        """
        consumer = self.make(max_in_flight_bytes=1024)
        self.answer_claim(rows(1, 1, size=5000))
        self.assertEqual(consumer.ledger.held, 5000)
        self.conn.deliver("t1")
        self.clock.advance(60)
        self.no_claim()
        self.settle_all()
        self.acknowledged("{1}")
        self.assertEqual(consumer.ledger.held, 0)
        self.assertEqual(self.asked(), (1, 512, True))

    def test_all_cut_waits_for_room_for_them(self):
        """
        A claim whose every row was cut (changes in flight, the next ones
        bigger than what is free) is not made again until that much is
        free, or nothing is in flight.
        """
        consumer = self.make(max_in_flight_bytes=1600)
        self.answer_claim(rows(1, 2, size=100))  # 200 held: 700 to claim
        self.conn.deliver("t1")
        self.answer_claim(self.cut(rows(3, 1, size=1000), 0))
        self.write(("unclaim", "{3}"))
        self.conn.deliver("t1")
        self.clock.advance(60)
        self.no_claim()
        self.settle_all()
        self.acknowledged("{1,2}")
        self.assertEqual(self.asked()[1:], (800, True))
        self.assertEqual(consumer.ledger.held, 0)

    def test_a_claim_without_answer_makes_the_next_smaller(self):
        """
        A claim lost without an answer (its rows may have been too big to
        come within the deadline) makes the next claim ask for a quarter as
        many changes; the sizes of its answer count again.
        """
        consumer = self.make()
        self.claim().fail(ConnectionLostError("no answer within 10 s"))
        self.clock.advance(self.seen.delays[-1])
        self.assertEqual(self.claim().params[1], 2)
        self.answer_claim(rows(1, 2, size=100))
        self.assertEqual(consumer.budget.typical, 100)
        self.assertEqual(self.claim().params[1], 10)

    def test_held_follows_every_way_out(self):
        """
        Acknowledged, released, dead-lettered, given back or lost: what a
        change held is no longer counted.
        """
        consumer = self.make(max_in_flight_bytes=100000)
        self.answer_claim(rows(1, 5, size=100))
        ledger = consumer.ledger
        self.assertEqual(ledger.held, 500)
        changes = self.queue.take(4)
        changes[0].claim.done(changes[0])
        changes[1].claim.retry(changes[1], "again")
        changes[2].claim.reject(changes[2], "bad")
        self.assertEqual(ledger.held, 200)
        ledger.lost([changes[3].id])
        self.assertEqual(ledger.held, 100)
        consumer.give_back()
        self.assertEqual((ledger.held, ledger.in_flight), (0, {}))


class BreakerTests(_Consuming):
    def setUp(self):
        self.consumer = self.make(poll_interval=1.0)
        self.breaker = Breaker(self.clock, Backoff(backoff_policy(initial=5.0, jitter=None)))
        self.consumer.follow_breaker(self.breaker)

    def open(self):
        for _ in range(THRESHOLD):
            self.breaker.failed("down")
        self.assertEqual(self.breaker.state, "open")

    def test_open_gives_back_and_claims_nothing(self):
        self.answer_claim(rows(1, 3))
        self.open()
        self.assertEqual(len(self.queue), 0)
        self.write(("unclaim", "{1}"), ("unclaim", "{2,3}"))
        self.assertEqual(self.writes(), [])
        self.assertEqual(self.consumer.ledger.in_flight, {})
        self.conn.deliver("t1")
        self.consumer.supervisor.run.claim()
        self.clock.advance(4.9)  # polls, until the circuit half-opens
        self.no_claim()
        self.clock.advance(0.1)
        self.assertEqual(self.claim().params[1], 1)

    def test_open_while_claiming(self):
        """
        A claim in flight when the circuit opens: what it took is given
        back as soon as it comes, not held while the circuit is open.
        """
        query = self.claim()
        self.open()
        query.answer(rows(1, 2))
        self.assertEqual(len(self.queue), 0)
        self.write(("unclaim", "{1}"), ("unclaim", "{2}"))
        self.assertEqual(self.consumer.ledger.in_flight, {})
        self.assertEqual(self.seen.calls, [("ready",)])
        self.no_claim()

    def test_a_connection_made_while_open(self):
        """
        A connection made while the circuit is open claims nothing, and is
        not ready (C{"starting"}) until the circuit half-opens and its
        probing claim comes back.
        """
        self.answer_claim([])
        self.open()
        self.conn.lose()
        self.clock.advance(self.seen.delays[-1])
        self.assertEqual(self.consumer.state, "starting")
        self.no_claim()
        self.clock.advance(5)
        self.assertEqual(self.breaker.state, "half-open")
        self.answer_claim([])
        self.assertEqual(self.consumer.state, "consuming")

    def test_half_open_claims_one_batch(self):
        """
        Probing: one processor batch (half the pacer's floor, at least 1),
        and nothing more while it is in flight.
        """
        self.answer_claim([])
        self.open()
        self.clock.advance(5)
        self.assertEqual(self.breaker.state, "half-open")
        query = self.claim()
        self.assertEqual(query.params[1], 1)
        query.answer(rows(1, 1))
        self.conn.deliver("t1")
        self.no_claim()
        self.breaker.succeeded()
        self.assertEqual(self.breaker.state, "closed")
        self.assertEqual(self.claim().params[1], 10)


class ExtensionTests(_Consuming):
    def extensions(self):
        return self.conn.waiting(self.statements["extend"])

    def test_extended_every_third_of_the_visibility(self):
        """
        One statement per claim token, every visibility_timeout / 3, at
        most one extension in flight.
        """
        self.make()
        first = self.answer_claim(rows(1, 3))
        self.conn.deliver("t1")
        second = self.answer_claim(rows(4, 2))
        self.clock.advance(9.9)
        self.assertEqual(self.extensions(), [])
        self.clock.advance(0.1)
        ext = self.extensions()
        self.assertEqual([q.params for q in ext], [
            ("{1,2,3}", first.params[2], 30.0), ("{4,5}", second.params[2], 30.0)])
        self.clock.advance(10)
        self.assertEqual(len(self.extensions()), 2)  # the one in flight, no other
        ext[0].answer([(1,), (2,), (3,)])
        ext[1].answer([(4,), (5,)])
        self.clock.advance(10)
        self.assertEqual(len(self.extensions()), 2)

    def test_nothing_in_flight_nothing_extended(self):
        self.make()
        self.answer_claim([])
        self.clock.advance(10)
        self.assertEqual(self.extensions(), [])

    def test_expired_claims_are_counted_lost(self):
        consumer = self.make()
        self.answer_claim(rows(1, 3))
        self.clock.advance(10)
        self.extensions()[0].answer([(1,), (3,)])
        self.assertEqual(list(consumer.ledger.in_flight), [1, 3])
        self.assertEqual(consumer.ledger.counts["lost"], 1)
        [line] = self.lines()
        self.assertIn("1 claim(s) expired before their changes were processed", line)

    def test_settled_meanwhile_is_not_lost(self):
        consumer = self.make()
        self.answer_claim(rows(1, 2))
        self.clock.advance(10)
        self.settle_all()
        self.extensions()[0].answer([])
        self.assertEqual(consumer.ledger.counts["lost"], 0)

    def test_at_once_after_a_reconnect(self):
        """
        Claims still in flight when the connection went are extended as
        soon as the next one works (they were last extended on the lost
        one), before the next claim.
        """
        self.make()
        self.answer_claim(rows(1, 3))
        self.clock.advance(5)
        self.conn.lose()
        self.clock.advance(self.seen.delays[-1])
        self.assertEqual(self.consumer.state, "starting")
        [ext] = self.extensions()
        self.assertEqual(ext.params[0], "{1,2,3}")
        self.assertEqual(self.conn.asked, [ext, self.claim()])

    def test_refused_extension_loses_the_connection(self):
        self.make()
        self.answer_claim(rows(1, 3))
        self.clock.advance(10)
        self.extensions()[0].fail(DENIED)
        self.assertIs(self.seen.calls[-1][1], DENIED)
        self.assertEqual(self.consumer.state, "waiting")


class CutTests(_Consuming):
    """
    Statements the server cut short (a short statement_timeout): no
    reconnect, one line, tried again.
    """

    def extensions(self):
        return self.conn.waiting(self.statements["extend"])

    def cut_lines(self):
        return [formatEvent(e) for e in self.log
                if e.get("log_level") == LogLevel.warn and "cut short" in formatEvent(e)]

    def test_a_cut_claim_is_tried_again(self):
        """
        A cut claim keeps the connection: one line naming the cause, the
        claim again after 0.05 s, doubling while claims keep being cut; a
        claim that works resets the delay.
        """
        self.make()
        self.claim().fail(CUT)
        self.assertEqual(self.lost(), [])
        self.assertEqual(self.consumer.state, "starting")  # connected, not delivering
        self.no_claim()
        self.clock.advance(0.05)
        self.claim().fail(CUT)
        self.clock.advance(0.05)
        self.no_claim()
        self.clock.advance(0.051)  # 0.1 s after the second cut
        self.assertEqual(self.claim().params[1], 10)
        (line,) = self.cut_lines()
        self.assertIn("a claim was cut short by the server: canceling statement due to statement "
                      "timeout (SQLSTATE 57014); claiming again in 0.05 s, on the same connection", line)
        self.answer_claim([])
        # The next line about a cut comes CUT_LINE_SECONDS after the last,
        # and the delay starts again from 0.05 s.
        self.assertGreater(60, CUT_LINE_SECONDS)
        self.clock.advance(60)  # the poll
        self.claim().fail(CUT)
        self.assertEqual(len(self.cut_lines()), 2)
        self.assertIn("claiming again in 0.05 s", self.cut_lines()[1])
        self.assertEqual(self.lost(), [])

    def lost(self):
        return [call for call in self.seen.calls if call[0] == "lost"]

    def test_a_cut_extension_is_tried_again(self):
        self.make()
        self.answer_claim(rows(1, 3))
        self.clock.advance(10)
        self.extensions()[0].fail(CUT)
        self.assertEqual(self.lost(), [])
        self.assertEqual(self.consumer.state, "consuming")
        self.clock.advance(0.05)
        [ext] = self.extensions()
        self.assertEqual(ext.params[0], "{1,2,3}")
        ext.answer(ids("{1,2,3}"))
        self.assertEqual(self.consumer.ledger.counts["lost"], 0)
        (line,) = self.cut_lines()
        self.assertIn("extending claims was cut short by the server", line)

    def test_other_errors_still_lose_the_connection(self):
        self.make()
        self.claim().fail(DENIED)
        self.assertEqual(self.seen.calls[0][:2], ("lost", DENIED))


class DeadConnectionTests(_Consuming):
    def test_liveness_probe(self):
        """
        With nothing to do, the probe asks liveness_interval after the last
        answer (its own answers included); an answer keeps the connection,
        none within liveness_timeout loses it.
        """
        self.make(liveness_timeout=10.0, liveness_interval=1.0)
        self.answer_claim([])
        for _ in range(3):
            self.clock.advance(1)
            self.conn.one("SELECT 1").answer([(1,)])
        self.clock.advance(1)
        self.conn.one("SELECT 1")
        self.clock.advance(9.9)
        self.assertEqual(self.consumer.state, "consuming")
        self.clock.advance(0.1)
        [(_, error, _)] = self.seen.calls[1:]
        self.assertIsInstance(error, ConnectionLostError)
        self.assertEqual(str(error), "no answer to the liveness probe within 10 s")
        self.assertEqual(self.consumer.state, "waiting")
        self.assertFalse(self.connector.connections[0].is_open)

    def test_query_deadline(self):
        """
        A claim unanswered within liveness_timeout: the connection is
        dead, a new one follows.
        """
        self.make(liveness_timeout=10.0, liveness_interval=20.0)
        self.clock.advance(10)
        [(_, error, delay)] = self.seen.calls
        self.assertEqual(str(error), "no answer from the server within 10 s")
        self.clock.advance(delay)
        self.assertEqual(len(self.connector.connections), 2)
        self.assertEqual(len(self.claims()), 1)

    def test_acknowledgement_deadline(self):
        self.make(liveness_timeout=10.0, liveness_interval=20.0)
        self.answer_claim(rows(1, 1))
        self.settle_all()
        self.clock.advance(0)
        self.conn.one(self.statements["ack"])
        self.clock.advance(10)
        [_, (_, error, delay)] = self.seen.calls
        self.assertEqual(str(error), "no answer from the server within 10 s")
        # What was owed is written on the next connection.
        self.clock.advance(delay)
        self.assertEqual(self.conn.one(self.statements["ack"]).params[0], "{1}")


class StopTests(_Consuming):
    def assertStopped(self, stopped):
        self.successResultOf(stopped)
        self.assertEqual(self.consumer.state, "stopped")
        self.assertFalse(self.conn.is_open)
        self.assertEqual(self.conn.waiting(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_waits_for_the_claim_in_flight_and_gives_it_back(self):
        self.make(liveness_timeout=10.0)
        query = self.claim()
        stopped = self.consumer.stopService()
        self.assertEqual(self.consumer.state, "stopping")
        self.assertNoResult(stopped)
        query.answer(rows(1, 2))
        self.assertEqual(len(self.queue), 0)
        self.assertEqual(self.conn.one(self.statements["unclaim"]).params[1], query.params[2])
        self.write(("unclaim", "{1}"))
        self.assertNoResult(stopped)
        self.write(("unclaim", "{2}"))
        self.assertStopped(stopped)
        self.assertEqual(self.consumer.ledger.in_flight, {})

    def test_gives_back_what_is_queued_and_writes_what_is_owed(self):
        self.make(liveness_timeout=10.0)
        self.answer_claim(rows(1, 3))
        first = self.queue.take(1)[0]
        first.claim.done(first)
        stopped = self.consumer.stopService()
        self.write(("ack", "{1}"), ("unclaim", "{2}"))
        self.assertNoResult(stopped)
        self.write(("unclaim", "{3}"))
        self.assertEqual(self.writes(), [])
        self.assertStopped(stopped)
        self.assertEqual(self.consumer.ledger.counts["acked"], 1)

    def test_idle(self):
        self.make(liveness_timeout=10.0)
        self.answer_claim([])
        self.assertStopped(self.consumer.stopService())

    def test_lost_while_draining(self):
        self.make(liveness_timeout=10.0)
        query = self.claim()
        stopped = self.consumer.stopService()
        self.conn.lose()
        self.successResultOf(stopped)
        self.assertEqual(self.consumer.state, "stopped")
        query.answer(rows(1, 2))  # too late: nothing is queued
        self.assertEqual(len(self.queue), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FiguresTests(_Consuming):
    def figures(self):
        return self.conn.waiting(outbox_sql.figures("hermes"))

    def test_read_after_the_first_claim_then_when_asked_and_cached(self):
        consumer = self.make(stats_interval=5.0)
        self.assertEqual(self.figures(), [])
        self.answer_claim([])
        [read] = self.figures()  # the first claim worked: read, for the first scrape
        self.assertEqual(consumer.figures(), {})
        self.assertEqual(read.params, (["t1", "t2"], 10000))
        self.assertEqual(consumer.figures(), {})
        self.assertEqual(len(self.figures()), 1)  # one read at a time
        read.answer([("t1", 3, 2, 3.5, 1, False), ("t2", 0, 0, None, 0, False)])
        self.assertEqual(consumer.figures(), {"t1": (3, 2, 3.5, 1), "t2": (0, 0, None, 0)})
        self.clock.advance(4.9)
        consumer.figures()
        self.assertEqual(self.figures(), [])
        self.clock.advance(0.1)
        consumer.figures()
        self.assertEqual(len(self.figures()), 1)

    def test_not_read_while_not_consuming(self):
        consumer = self.make(stats_interval=5.0)
        self.conn.lose()
        self.assertEqual(consumer.state, "waiting")
        self.assertEqual(consumer.figures(), {})
        self.assertEqual(self.conn.asked[1:], [])

    def test_never_read(self):
        consumer = self.make(stats_interval=None)
        self.assertEqual(consumer.figures(), {})
        self.assertEqual(self.conn.waiting(), [self.claim()])
