"""
L{hermes_tx.processors.JsonLinesProcessor} in its consumer loop, in memory
(a L{tests.support.workers.ManualWorker} for the writer's thread, a
C{task.Clock}): back-pressure on the queue, waits bounded by the execute
timeout, cancelled waits, outbox changes claimed again, a closed pipe; and
a randomized run of failing and partial writes after which every line is
in the output exactly once, whole, and every change was acknowledged only
after its line was written.
"""

import errno
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.logger import formatEvent
from twisted.trial import unittest

from hermes_tx.events import Change, Event
from hermes_tx.processors import FLUSH_EVERY, JsonLinesProcessor, OutputClosed
from hermes_tx.runtime.queue import EventQueue
from tests.support.shared import capture_log
from tests.support.workers import FakeRawFile, ManualWorker, full


class FakeClaim:
    """
    The outbox's side of changes: an acknowledgement records the change
    (and whether its line was in the output then); a release hands the
    change back to the queue, as a new object claimed again, after its
    delay.
    """

    def __init__(self, queue, clock, output):
        self.queue = queue
        self.clock = clock
        self.output = output
        self.acked = []  # (id, whether its whole line was written by then)
        self.released = 0

    def change(self, i, attempts=0):
        return Change(i, "t", f"k{i}", attempts, 1.0, json.dumps({"n": i}), claim=self)

    def done(self, change):
        written = any(json.loads(line).get("id") == change.id
                      for line in self.output.data.split(b"\n")[:-1])
        self.acked.append((change.id, written))

    def retry(self, change, reason, retry_after=None):
        self.released += 1
        self.clock.callLater(max(retry_after or 0, 0.5), self.queue.put,
                             self.change(change.id, change.attempts + 1))

    def reject(self, change, reason):
        raise AssertionError(f"change {change.id} rejected: {reason}")


class LoopCase(unittest.TestCase):
    def make(self, output, maxsize=None, execute_timeout=None, max_buffered=None, queued=()):
        """
        @return: a processor, not started, whose writer's jobs run on
            C{self.worker}'s say, with C{queued} in its queue.
        """
        self.clock = task.Clock()
        self.worker = ManualWorker()
        p = JsonLinesProcessor(output=output, clock=self.clock, worker_factory=lambda: self.worker,
                               execute_timeout=execute_timeout, backoff_limit=1)
        if max_buffered is not None:
            p.max_buffered = max_buffered
        p.notification_pipe = EventQueue(maxsize)
        p.notification_pipe.put_many(list(queued))
        return p

    def started(self, *args, **kwargs):
        p = self.make(*args, **kwargs)
        p.startService()
        self.worker.run_all()  # the open
        return p


def note(i):
    return Event("notification", "c", f"n{i}", 1, 1.0)


def lines_of(out):
    return [json.loads(line) for line in out.data.decode().splitlines()]


class BackPressureTests(LoopCase):
    def test_an_idle_event_waits_and_the_queue_fills(self):
        """
        An event that finds the queue empty waits for its line; while the
        output takes nothing, what arrives meanwhile stays queued (a
        listener stops reading once it is full); once the output takes
        lines, everything flows again and nothing is lost.
        """
        out = FakeRawFile()
        p = self.make(out, maxsize=10)
        p.startService()
        self.worker.run_all()  # the open
        queue = p.notification_pipe
        for i in range(30):
            queue.put(note(i))
        self.assertTrue(queue.is_full)
        self.assertEqual((len(queue), p.processed), (29, {}))
        self.worker.run_all()
        self.assertEqual(len(queue), 0)
        self.assertEqual([r["payload"] for r in lines_of(out)], [f"n{i}" for i in range(30)])
        self.assertEqual(p.processed["c"], 30)

    def test_a_backlog_waits_for_room(self):
        """
        A backlog is taken (in batches) without waiting until the lines not
        written pass max_buffered; then execute waits until half of them
        are.
        """
        out = FakeRawFile()
        count = FLUSH_EVERY + 100  # more than a batch
        p = self.make(out, max_buffered=1000, queued=[note(i) for i in range(count)])
        p.startService()
        self.worker.run_one()  # the open; the backlog starts
        self.assertEqual(p.processed, {})  # its first batch waits for room
        self.assertEqual(len(p.notification_pipe), 100)
        self.assertEqual(len(self.worker.jobs), 1)  # handed over to make room
        self.worker.run_all()
        self.assertEqual([r["payload"] for r in lines_of(out)], [f"n{i}" for i in range(count)])
        self.assertEqual(p.processed["c"], count)

    def test_a_change_waits_for_its_line(self):
        out = FakeRawFile()
        p = self.started(out)
        claim = FakeClaim(p.notification_pipe, self.clock, out)
        p.notification_pipe.put(claim.change(1))
        self.assertEqual(claim.acked, [])
        self.worker.run_all()
        self.assertEqual(claim.acked, [(1, True)])


class TimeoutTests(LoopCase):
    def test_wait_ends_in_retry_before_the_execute_timeout(self):
        """
        With execute_timeout 10, a wait for a stuck output ends after 5 s
        in Retry (one line, the event executed again after a backoff), not
        in a cancelled execute; the line is written once.
        """
        out = FakeRawFile()
        p = self.started(out, execute_timeout=10)
        events = capture_log(self)
        p.notification_pipe.put(note(1))
        self.clock.advance(5)
        self.assertEqual(p.failures, 1)
        self.assertIn("cannot write to", formatEvent(events[-1]))
        self.assertIn("it took nothing for 5 s", formatEvent(events[-1]))
        self.assertIsNotNone(p.failing)
        self.clock.advance(1)  # executed again: waits for the same line
        self.assertEqual(len(self.worker.jobs), 1)
        self.worker.run_all()
        self.assertEqual([r["payload"] for r in lines_of(out)], ["n1"])
        self.assertEqual(p.processed["c"], 1)
        self.assertIsNone(p.failing)

    def test_change_released_while_its_line_is_in_the_thread(self):
        """
        A change whose wait ends while its line is in the thread is
        released; claimed again (a new object, the same id), it does not
        write its line again, and is acknowledged once the line is out.
        """
        out = FakeRawFile()
        p = self.started(out, execute_timeout=10)
        claim = FakeClaim(p.notification_pipe, self.clock, out)
        p.notification_pipe.put(claim.change(7))
        self.clock.advance(5)
        self.assertEqual(claim.released, 1)
        self.clock.advance(1)  # claimed again, executed
        self.worker.run_all()
        self.assertEqual([r["id"] for r in lines_of(out)], [7])
        self.assertEqual(claim.acked, [(7, True)])

    def test_change_taken_back_when_none_of_it_was_handed_over(self):
        """
        A change whose line is still only buffered (the thread busy with
        the lines of a backlog before it) is taken back when its wait ends:
        claimed again, it writes its line (with its new attempt count)
        once.
        """
        out = FakeRawFile()
        queued = [note(i) for i in range(FLUSH_EVERY)]
        p = self.make(out, execute_timeout=10, queued=queued)
        claim = FakeClaim(p.notification_pipe, self.clock, out)
        p.notification_pipe.put(claim.change(7))
        p.startService()
        self.worker.run_one()  # the open; then the backlog, handed over
        self.assertEqual(len(self.worker.jobs), 1)
        self.clock.advance(5)  # the change's wait ends: taken back, released
        self.assertEqual(claim.released, 1)
        self.clock.advance(1)  # claimed again: waits behind the backlog
        self.worker.run_all()
        records = lines_of(out)
        self.assertEqual(len(records), FLUSH_EVERY + 1)
        self.assertEqual([(r["id"], r["attempts"]) for r in records if r["kind"] == "change"],
                         [(7, 1)])
        self.assertEqual(claim.acked, [(7, True)])

    def test_cancelled_notification_keeps_its_line(self):
        """
        A notification's wait cancelled from outside (the consumer loop's
        execute timeout): its line stays, to be written, since the event
        is not executed again; executed again anyway, it is not repeated.
        """
        out = FakeRawFile()
        p = self.started(out)  # nothing queued: execute waits for its line
        e = note(1)
        d = p.execute(e)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        d = p.execute(e)
        self.worker.run_all()
        self.assertIs(self.successResultOf(d), e)
        self.assertEqual([r["payload"] for r in lines_of(out)], ["n1"])


class ClosedPipeTests(LoopCase):
    def test_broken_pipe_terminates(self):
        """
        EPIPE (the reader went away) is OutputClosed, which the default
        error strategy makes terminal: one line each, no traceback.
        """
        out = FakeRawFile(BrokenPipeError(errno.EPIPE, "Broken pipe"))
        p = self.started(out)
        events = capture_log(self)
        p.notification_pipe.put(note(1))
        self.worker.run_all()
        self.assertIsInstance(p.terminated.error, OutputClosed)
        self.assertTrue(str(p.terminated.error).endswith(
            " was closed by its reader (BrokenPipeError: [Errno 32] Broken pipe)"))
        text = [formatEvent(e) for e in events]
        self.assertTrue(any("terminated by OutputClosed" in t for t in text), text)
        self.assertFalse(any("Traceback" in t for t in text))

    def test_other_strategies_decide(self):
        """
        A processor given its own error strategy gets OutputClosed there.
        """
        from hermes_tx.strategies import CommonErrorStrategy

        self.assertEqual(CommonErrorStrategy().handle_exception(OutputClosed("x")),
                         (False, "BACKOFF"))
        p = JsonLinesProcessor(output="-", error_strategy=CommonErrorStrategy())
        self.assertIsInstance(p.error_strategy, CommonErrorStrategy)


class OneAtATime(JsonLinesProcessor):
    """
    A subclass overriding execute: it gets one event at a time.
    """

    def execute(self, event):
        return JsonLinesProcessor.execute(self, event)


class RandomizedTests(unittest.TestCase):
    @settings(max_examples=150, deadline=None)
    @given(st.randoms(use_true_random=False), st.integers(1, 40))
    def test_every_line_once_and_whole(self, rnd, count):
        """
        Notifications and changes through the real consumer loop onto an
        output whose writes take random parts, fail (ENOSPC) at random and
        are slow (execute timeout 10): in the end every event's line is in
        the output exactly once and whole, in order for the notifications,
        and every change was acknowledged only once its line was written.
        The processor takes what is queued in batches.
        """
        self.check(JsonLinesProcessor, rnd, count)

    @settings(max_examples=150, deadline=None)
    @given(st.randoms(use_true_random=False), st.integers(1, 40))
    def test_one_at_a_time(self, rnd, count):
        """
        The same with a subclass that takes one event at a time.
        """
        self.check(OneAtATime, rnd, count)

    def check(self, cls, rnd, count):
        clock = task.Clock()
        worker = ManualWorker()
        script = []
        for _ in range(rnd.randint(0, 60)):
            script.append(rnd.choice([None, None, rnd.randint(0, 120), full()]))
        out = FakeRawFile(*script)
        p = cls(output=out, clock=clock, worker_factory=lambda: worker,
                execute_timeout=10, backoff_limit=1)
        self.assertEqual(p.max_batch, FLUSH_EVERY if cls is JsonLinesProcessor else None)
        queue = p.notification_pipe = EventQueue()
        claim = FakeClaim(queue, clock, out)
        p.startService()
        worker.run_all()
        expected_notes, expected_changes = [], set()
        for i in range(count):
            if rnd.random() < 0.4:
                queue.put(claim.change(i))
                expected_changes.add(i)
            else:
                queue.put(note(i))
                expected_notes.append(f"n{i}")
            for _ in range(rnd.randint(0, 3)):
                step = rnd.random()
                if step < 0.5 and worker.jobs:
                    worker.run_one()
                else:
                    clock.advance(rnd.choice([0.1, 1, 3]))
        out.script = []  # from now on the output takes everything
        for _ in range(200):
            worker.run_all()
            clock.advance(1)
            done = {i for i, _ in claim.acked}
            if (done == expected_changes and p.processed.get("c", 0) >= len(expected_notes)
                    and not worker.jobs):
                break
        records = lines_of(out)  # every line parses: none is half written
        self.assertEqual([r["payload"] for r in records if r["kind"] == "notification"],
                         expected_notes)
        ids = [r["id"] for r in records if r["kind"] == "change"]
        self.assertEqual(sorted(ids), sorted(expected_changes))  # each once
        self.assertTrue(out.data.endswith(b"\n") or not out.data)
        self.assertEqual({i for i, _ in claim.acked}, expected_changes)
        self.assertTrue(all(written for _, written in claim.acked), claim.acked)
        self.assertEqual(p.lines_written, len(records))
        stopped = p.stopService()
        worker.run_all()
        self.successResultOf(stopped)
