"""
Tests for L{hermes_tx.processors}, in memory: the writer's thread is a
L{tests.support.workers.ManualWorker} whose jobs run when the test says.
(Back-pressure, timeouts and closed pipes: tests.test_jsonlines_delivery;
real pipes, threads and twistd: tests.test_jsonlines_pipe.)
"""

import datetime
import decimal
import io
import json
import math
import os
import uuid

from twisted.internet import defer, task
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from hermes_tx.events import Event, strict_json_loads
from hermes_tx.outcomes import Retry
from hermes_tx.processors import FLUSH_EVERY, TURN_BUDGET, JsonLinesProcessor, json_line
from tests.support.shared import capture_log
from tests.support.workers import FakeRawFile, ManualWorker, full


class CountingFile(io.StringIO):
    """
    A text file that counts flushes and records what was flushed.
    """

    def __init__(self):
        super().__init__()
        self.flushed = []

    def flush(self):
        self.flushed.append(self.getvalue().count("\n"))


class FlushFailsOnce(io.StringIO):
    """
    A text file whose first flush fails (a full disk).
    """

    fail = 1

    def flush(self):
        if self.fail:
            self.fail -= 1
            raise full()


def strict_loads(line):
    """
    Parse one line as RFC 8259 JSON only (no NaN, no Infinity).
    """
    return strict_json_loads(line)


class ProcessorCase(unittest.TestCase):
    def make(self, output, queued=()):
        """
        A processor on C{output} whose writer's jobs run on
        C{self.worker.run_all()}, with C{queued} items pending in its queue.
        """
        self.worker = ManualWorker()
        p = JsonLinesProcessor(output=output, clock=task.Clock(),
                               worker_factory=lambda: self.worker)
        p.notification_pipe = defer.DeferredQueue()
        p.notification_pipe.pending.extend(queued)
        return p

    def set_up(self, p):
        d = p.set_up()
        self.worker.run_all()
        self.successResultOf(d)
        return p

    def start(self, p):
        p.startService()
        self.worker.run_all()
        return p

    def stop(self, p):
        d = p.stopService()
        self.worker.run_all()
        self.successResultOf(d)

    def execute(self, p, event):
        """
        Execute C{event} and run the writer's jobs.

        @return: what C{execute} returned (or its Deferred's result).
        @raise Exception: what it raised (or its Deferred failed with).
        """
        d = defer.maybeDeferred(p.execute, event)
        self.worker.run_all()
        results = []
        d.addBoth(results.append)
        self.assertTrue(results, "execute is still waiting")
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]


class JsonLinesProcessorTests(ProcessorCase):
    def test_one_object_per_line(self):
        out = CountingFile()
        p = self.start(self.make(out))
        p.notification_pipe.put(Event("start", received_at=1.0))
        p.notification_pipe.put(Event("notification", "Mixed-Case \"q\"", "ünï 'x'\n", 42, 2.5))
        self.worker.run_all()
        self.stop(p)
        lines = out.getvalue().splitlines()
        self.assertEqual(
            [json.loads(line) for line in lines],
            [
                {"kind": "start", "channel": None, "payload": None, "pid": None, "received_at": 1.0},
                {"kind": "notification", "channel": 'Mixed-Case "q"', "payload": "ünï 'x'\n",
                 "pid": 42, "received_at": 2.5},
            ],
        )
        self.assertIn("ünï", lines[1])  # UTF-8 as is, not \u escapes
        self.assertEqual(p.lines_written, 2)

    def test_flushes_when_idle(self):
        """
        Each line is written at once when nothing else is queued, and the
        event is done only then.
        """
        out = CountingFile()
        p = self.start(self.make(out))
        for i in range(3):
            p.notification_pipe.put(Event("notification", "c", str(i), 1, 0.0))
            self.assertEqual(p.processed.get("c", 0), i)  # waits for the thread
            self.worker.run_all()
            self.assertEqual(out.flushed[-1], i + 1)
            self.assertEqual(p.processed["c"], i + 1)
        self.assertEqual(out.flushed, [1, 2, 3])

    def test_backlog_flushes_in_batches(self):
        """
        A backlog is handed to the thread FLUSH_EVERY lines at a time and
        at once when it runs dry, never holding the last line back; the
        events before that are done without waiting for the thread.
        """
        out = CountingFile()
        p = self.make(out)
        total = FLUSH_EVERY * 2 + 7
        for i in range(total):
            p.notification_pipe.put(Event("notification", "c", str(i), 1, 0.0))
        self.start(p)  # opens, then works through the backlog
        self.assertEqual(out.flushed[0], FLUSH_EVERY)
        self.assertEqual(out.flushed[-1], total)
        self.assertLessEqual(len(out.flushed), 3)
        self.assertEqual(p.processed["c"], total)

    def test_appends_to_path(self):
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write('{"kind": "earlier"}\n')
        p = self.start(self.make(path))
        p.notification_pipe.put(Event("notification", "c", "☃", 7, 1.0))
        self.worker.run_all()
        self.stop(p)
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        self.assertEqual([r["kind"] for r in records], ["earlier", "notification"])
        self.assertEqual(records[1]["payload"], "☃")

    def test_stdout_is_the_real_one(self):
        """
        "-" writes to the process's file descriptor 1 even when sys.stdout
        has been replaced (as twistd does).
        """
        path = self.mktemp()
        saved = os.dup(1)
        self.addCleanup(os.close, saved)
        with open(path, "w") as f:
            os.dup2(f.fileno(), 1)
        try:
            p = self.start(self.make("-"))
            p.notification_pipe.put(Event("notification", "c", "to fd 1", 1, 1.0))
            self.worker.run_all()
            self.stop(p)
        finally:
            os.dup2(saved, 1)
        with open(path, encoding="utf-8") as f:
            self.assertEqual(json.loads(f.read())["payload"], "to fd 1")

    def test_a_long_backlog_gives_the_reactor_turns(self):
        """
        Working through a backlog without waiting, execute gives the
        reactor a turn (a Deferred firing on its next turn) once
        TURN_BUDGET seconds of work went by without one, not before.
        """
        p = self.set_up(self.make(FakeRawFile(), queued=["more"]))
        events = [Event("notification", "c", str(i), 1, 0.0) for i in range(3)]
        self.assertIs(p.execute(events[0]), events[0])
        p.clock.advance(TURN_BUDGET)
        turn = p.execute(events[1])
        self.assertNoResult(turn)
        p.clock.advance(0)
        self.assertIs(self.successResultOf(turn), events[1])
        self.assertIs(p.execute(events[2]), events[2])

    def test_cannot_open(self):
        """
        An output that cannot be opened fails set_up with the OSError.
        """
        p = self.make(os.path.join(self.mktemp(), "no", "such", "dir"))
        d = p.set_up()
        self.worker.run_all()
        self.failureResultOf(d, FileNotFoundError)


class WriteErrorTests(ProcessorCase):
    """
    An OSError while writing makes the event raise Retry; nothing is
    skipped, nothing written twice, no line left half-written.
    """

    def event(self, i):
        return Event("notification", "c", f"p{i}", 1, 1.0)

    def lines(self, raw):
        return [strict_loads(line)["payload"] for line in raw.data.decode().splitlines()]

    def test_failed_write_retries_the_same_event(self):
        out = FakeRawFile(full(), full())
        p = self.set_up(self.make(out))
        e = self.event(1)
        self.assertRaises(Retry, self.execute, p, e)
        error = self.assertRaises(Retry, self.execute, p, e)
        self.assertIn("[Errno 28] No space left on device", str(error))
        self.assertEqual((out.data, p.lines_written), (b"", 0))
        self.assertIs(self.execute(p, e), e)
        self.execute(p, self.event(2))
        self.assertEqual(self.lines(out), ["p1", "p2"])
        self.assertEqual(p.lines_written, 2)

    def test_partly_written_line_is_finished_not_repeated(self):
        out = FakeRawFile(10, full())
        p = self.set_up(self.make(out))
        e = self.event(1)
        self.assertRaises(Retry, self.execute, p, e)
        self.assertEqual(len(out.data), 10)
        self.assertEqual(p.lines_written, 0)
        self.execute(p, e)  # executed again: only the rest of its line is written
        self.assertEqual(self.lines(out), ["p1"])
        self.assertEqual(p.lines_written, 1)

    def test_partial_line_is_finished_before_the_next(self):
        """
        Even when the event whose line is partly out is never executed
        again, the next line is written only after the rest of it.
        """
        out = FakeRawFile(5, full())
        p = self.set_up(self.make(out))
        self.assertRaises(Retry, self.execute, p, self.event(1))
        self.execute(p, self.event(2))
        self.assertEqual(self.lines(out), ["p1", "p2"])

    def test_batch_counts_only_written_lines(self):
        """
        In a backlog, lines are buffered and the events done; when the
        write fails, the event at hand raises Retry and its line (none of
        it written) is taken back; the earlier ones stay and are written
        first.
        """
        out = FakeRawFile()
        p = self.set_up(self.make(out, queued=["more"] * 3))
        self.assertEqual(self.execute(p, self.event(1)).payload, "p1")
        self.execute(p, self.event(2))
        self.assertEqual((out.data, p.lines_written), (b"", 0))
        del p.notification_pipe.pending[:]
        first = len(json_line(self.event(1).as_dict()).encode())
        out.script = [first + 3, full()]
        self.assertRaises(Retry, self.execute, p, self.event(3))
        self.assertEqual(p.lines_written, 1)
        out.script = []
        self.execute(p, self.event(3))
        self.assertEqual(self.lines(out), ["p1", "p2", "p3"])
        self.assertEqual(p.lines_written, 3)

    def test_would_block_is_a_retry(self):
        out = FakeRawFile(0)
        p = self.set_up(self.make(out))
        e = self.event(1)
        self.assertRaises(Retry, self.execute, p, e)
        self.execute(p, e)
        self.assertEqual(self.lines(out), ["p1"])

    def test_text_file_flush_error(self):
        """
        A text file that fails to flush got the line already: when the
        event comes again, only the flush is repeated.
        """

        out = FlushFailsOnce()
        p = self.set_up(self.make(out))
        e = self.event(1)
        self.assertRaises(Retry, self.execute, p, e)
        self.execute(p, e)
        self.assertEqual([strict_loads(x)["payload"] for x in out.getvalue().splitlines()], ["p1"])
        self.assertEqual(p.lines_written, 1)

    def test_text_file_flush_error_then_another_event(self):
        """
        The text file holds a line it could not flush; the next event is a
        different one (the first went elsewhere): the held line is neither
        written again nor taken back, the new one follows it.
        """

        out = FlushFailsOnce()
        p = self.set_up(self.make(out))
        self.assertRaises(Retry, self.execute, p, self.event(1))
        self.execute(p, self.event(2))
        self.assertEqual([strict_loads(x)["payload"] for x in out.getvalue().splitlines()],
                         ["p1", "p2"])

    def test_dev_full(self):
        """
        The real thing: /dev/full refuses every line; each event raises
        Retry and nothing is counted as written.
        """
        p = self.set_up(self.make("/dev/full"))
        for i in range(3):
            self.assertRaises(Retry, self.execute, p, self.event(i))
        self.assertEqual(p.lines_written, 0)
        events = capture_log(self)
        d = p.tear_down()
        self.worker.run_all()
        self.successResultOf(d)
        self.assertEqual(events, [])  # their lines were taken back: nothing is owed

    def test_tear_down_reports_unwritten_lines(self):
        out = FakeRawFile()
        p = self.set_up(self.make(out, queued=["more"]))
        self.execute(p, self.event(1))
        out.script = [full()]
        events = capture_log(self)
        d = p.tear_down()
        self.worker.run_all()
        self.successResultOf(d)
        text = " ".join(formatEvent(e) for e in events)
        self.assertIn("1 buffered line(s) could not be written", text)
        self.assertIn("No space left on device", text)

    def test_tear_down_does_not_wait_for_a_stuck_write(self):
        """
        A stop while a write has been in the thread for a second or more
        (nobody reads): one line at once, nothing waited for; the event
        waiting for its line gets Retry.
        """
        p = self.set_up(self.make(FakeRawFile()))
        waiting = p.execute(self.event(1))
        p.clock.advance(2)
        events = capture_log(self)
        self.assertIsNone(p.tear_down())
        self.assertEqual(len(events), 1)
        self.assertIn("1 buffered line(s) could not be written to ", formatEvent(events[0]))
        self.assertIn(": it has taken nothing for 2 s", formatEvent(events[0]))
        self.failureResultOf(waiting, Retry)

    def test_tear_down_waits_at_most_half_the_shutdown_timeout(self):
        p = self.set_up(self.make(FakeRawFile(), queued=["more"]))
        self.execute(p, self.event(1))  # buffered, not handed over
        events = capture_log(self)
        d = p.tear_down()  # hands it over; the thread never answers
        p.clock.advance(p.shutdown_timeout / 2)
        self.assertIsNone(self.successResultOf(d))
        self.assertIn("1 buffered line(s) could not be written to ", formatEvent(events[0]))
        self.assertIn(": it took nothing for 5 s", formatEvent(events[0]))

    def test_tear_down_writes_what_is_buffered(self):
        out = FakeRawFile()
        p = self.set_up(self.make(out, queued=["more"]))
        self.execute(p, self.event(1))
        self.assertEqual(out.data, b"")
        d = p.tear_down()
        self.worker.run_all()
        self.successResultOf(d)
        self.assertEqual(self.lines(out), ["p1"])
        self.assertEqual(p.lines_written, 1)


class StrictOutputTests(ProcessorCase):
    """
    Whatever a processor puts in an event, each line is strict JSON.
    """

    def test_non_finite_floats_become_null(self):
        record = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": {"d": (math.nan,)}}
        self.assertEqual(strict_loads(json_line(record)),
                         {"a": None, "b": [None, None, 1.5], "c": {"d": [None]}})

    def test_other_python_values(self):
        when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
        ident = uuid.UUID(int=7)
        record = {"t": when, "d": datetime.date(2026, 1, 2), "n": decimal.Decimal("1.10"),
                  "u": ident, "s": {3}, "x": {decimal.Decimal("NaN"), math.nan} and [math.nan]}
        self.assertEqual(strict_loads(json_line(record)), {
            "t": "2026-01-02T03:04:05+00:00", "d": "2026-01-02", "n": "1.10",
            "u": str(ident), "s": [3], "x": [None],
        })
        self.assertRaises(TypeError, json_line, {"o": object()})

    def test_processor_output_is_strict(self):
        """
        Through the processor: an event a processor changed to hold NaN and
        a lone surrogate still makes a strict JSON line (the surrogate as a
        \\u escape), written as valid UTF-8.
        """
        path = self.mktemp()
        p = self.start(self.make(path))
        e = Event("notification", "c", "lone \udc80 surrogate", 1, 1.0)
        e.data = {"x": math.nan}
        p.notification_pipe.put(e)
        self.worker.run_all()
        self.stop(p)
        with open(path, "rb") as f:
            raw = f.read()
        record = strict_loads(raw.decode("utf-8"))
        self.assertEqual(record["data"], {"x": None})
        self.assertEqual(record["payload"], "lone \udc80 surrogate")


class ReopenTests(ProcessorCase):
    def test_reopen_after_move(self):
        """
        After the file is moved away, reopen() makes the next lines go to a
        new file at the path.
        """
        path = self.mktemp()
        p = self.start(self.make(path))
        p.notification_pipe.put(Event("notification", "c", "before", 1, 1.0))
        self.worker.run_all()
        os.rename(path, path + ".1")
        self.assertTrue(p.reopen())
        p.notification_pipe.put(Event("notification", "c", "after", 1, 1.0))
        self.worker.run_all()
        self.stop(p)
        for name, payload in ((path + ".1", "before"), (path, "after")):
            with open(name, encoding="utf-8") as f:
                self.assertEqual([strict_loads(x)["payload"] for x in f], [payload])

    def test_reopen_while_a_line_is_half_written(self):
        """
        When the old file took part of a line and takes nothing more, the
        rest is dropped on reopening and the event, executed again, writes
        its whole line to the new file.
        """
        path = self.mktemp()
        old = FakeRawFile(5, full(), full())
        p = self.set_up(self.make(old))
        p.output = path  # as if the old file had been opened at the path
        e = Event("notification", "c", "half", 1, 1.0)
        self.assertRaises(Retry, self.execute, p, e)
        events = capture_log(self)
        self.assertTrue(p.reopen())
        self.worker.run_all()
        self.assertIn("partly written line was dropped", formatEvent(events[-1]))
        self.execute(p, e)
        d = p.tear_down()
        self.worker.run_all()
        self.successResultOf(d)
        self.assertEqual(len(old.data), 5)
        with open(path, encoding="utf-8") as f:
            self.assertEqual([strict_loads(x)["payload"] for x in f], ["half"])
        self.assertEqual(p.lines_written, 1)

    def test_reopen_fails(self):
        """
        A path that cannot be opened again (a directory took its place):
        one line, and the lines go on to the old file.
        """
        path = self.mktemp()
        p = self.start(self.make(path))
        os.rename(path, path + ".1")
        os.mkdir(path)
        events = capture_log(self)
        self.assertTrue(p.reopen())
        p.notification_pipe.put(Event("notification", "c", "still", 1, 1.0))
        self.worker.run_all()
        self.stop(p)
        self.assertEqual(
            formatEvent(events[0]),
            f"could not reopen {path!r}: IsADirectoryError: [Errno 21] Is a directory: {path!r};"
            " writing on to the old file",
        )
        with open(path + ".1", encoding="utf-8") as f:
            self.assertEqual([strict_loads(x)["payload"] for x in f], ["still"])

    def test_nothing_to_reopen(self):
        p = self.start(self.make(io.StringIO()))
        self.assertFalse(p.reopen())
        self.assertFalse(JsonLinesProcessor(output="x").reopen())  # not running
