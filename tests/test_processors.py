"""
Tests for L{hermes_tx.processors}.
"""

import datetime
import decimal
import errno
import io
import json
import math
import os
import uuid

from twisted.internet import defer, task
from twisted.logger import formatEvent
from twisted.trial import unittest

from hermes_tx.events import Event, strict_json_loads
from hermes_tx.outcomes import Retry
from hermes_tx.processors import FLUSH_EVERY, JsonLinesProcessor, json_line
from tests.support.shared import capture_log


class CountingFile(io.StringIO):
    """
    A text file that counts flushes and records what was flushed.
    """

    def __init__(self):
        super().__init__()
        self.flushed = []

    def flush(self):
        self.flushed.append(self.getvalue().count("\n"))


class JsonLinesProcessorTests(unittest.TestCase):
    def make(self, output):
        p = JsonLinesProcessor(output=output, clock=task.Clock())
        p.notification_pipe = defer.DeferredQueue()
        return p

    def test_one_object_per_line(self):
        out = CountingFile()
        p = self.make(out)
        p.startService()
        p.notification_pipe.put(Event("start", received_at=1.0))
        p.notification_pipe.put(Event("notification", "Mixed-Case \"q\"", "ünï 'x'\n", 42, 2.5))
        p.stopService()
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

    def test_flushes_when_idle(self):
        """
        Each line is flushed at once when nothing else is queued.
        """
        out = CountingFile()
        p = self.make(out)
        p.startService()
        for i in range(3):
            p.notification_pipe.put(Event("notification", "c", str(i), 1, 0.0))
            self.assertEqual(out.flushed[-1], i + 1)
        self.assertEqual(out.flushed, [1, 2, 3])

    def test_backlog_flushes_in_batches(self):
        """
        A backlog is written with one flush per FLUSH_EVERY lines and one when
        it runs dry, never holding the last line back.
        """
        out = CountingFile()
        p = self.make(out)
        total = FLUSH_EVERY * 2 + 7
        for i in range(total):
            p.notification_pipe.put(Event("notification", "c", str(i), 1, 0.0))
        p.startService()
        self.assertEqual(out.flushed, [FLUSH_EVERY, FLUSH_EVERY * 2, total])

    def test_appends_to_path(self):
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write('{"kind": "earlier"}\n')
        p = self.make(path)
        p.startService()
        p.notification_pipe.put(Event("notification", "c", "☃", 7, 1.0))
        self.successResultOf(p.stopService())
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
            p = self.make("-")
            p.startService()
            p.notification_pipe.put(Event("notification", "c", "to fd 1", 1, 1.0))
            self.successResultOf(p.stopService())
        finally:
            os.dup2(saved, 1)
        with open(path, encoding="utf-8") as f:
            self.assertEqual(json.loads(f.read())["payload"], "to fd 1")


def strict_loads(line):
    """
    Parse one line as RFC 8259 JSON only (no NaN, no Infinity).
    """
    return strict_json_loads(line)


class FakeRawFile:
    """
    A binary file like C{io.FileIO} whose writes follow a script: each step
    is a number of bytes to take (None: all) or an OSError to raise.  What
    it took is in C{data}.
    """

    def __init__(self, *script):
        self.script = list(script)
        self.data = b""

    def write(self, data):
        step = self.script.pop(0) if self.script else None
        if isinstance(step, OSError):
            raise step
        taken = bytes(data) if step is None else bytes(data[:step])
        self.data += taken
        return len(taken)

    def close(self):
        pass


def full():
    return OSError(errno.ENOSPC, "No space left on device")


class WriteErrorTests(unittest.TestCase):
    """
    An OSError while writing makes the event raise Retry; nothing is
    skipped, nothing written twice, no line left half-written.
    """

    def make(self, output, queued=()):
        p = JsonLinesProcessor(output=output, clock=task.Clock())
        p.notification_pipe = defer.DeferredQueue()
        p.notification_pipe.pending.extend(queued)  # what is still queued
        p.set_up()
        return p

    def event(self, i):
        return Event("notification", "c", f"p{i}", 1, 1.0)

    def lines(self, raw):
        return [strict_loads(line)["payload"] for line in raw.data.decode().splitlines()]

    def test_failed_write_retries_the_same_event(self):
        out = FakeRawFile(full(), full())
        p = self.make(out)
        e = self.event(1)
        self.assertRaises(Retry, p.execute, e)
        self.assertRaises(Retry, p.execute, e)
        self.assertEqual((out.data, p.lines_written), (b"", 0))
        p.execute(e)
        p.execute(self.event(2))
        self.assertEqual(self.lines(out), ["p1", "p2"])
        self.assertEqual(p.lines_written, 2)

    def test_partly_written_line_is_finished_not_repeated(self):
        out = FakeRawFile(10, full())
        p = self.make(out)
        e = self.event(1)
        error = self.assertRaises(Retry, p.execute, e)
        self.assertIn("No space left on device", str(error))
        self.assertEqual(len(out.data), 10)
        self.assertEqual(p.lines_written, 0)
        p.execute(e)  # executed again: only the rest of its line is written
        self.assertEqual(self.lines(out), ["p1"])
        self.assertEqual(p.lines_written, 1)

    def test_partial_line_is_finished_before_the_next(self):
        """
        Even when the event whose line is partly out is never executed
        again, the next line is written only after the rest of it.
        """
        out = FakeRawFile(5, full())
        p = self.make(out)
        self.assertRaises(Retry, p.execute, self.event(1))
        p.execute(self.event(2))
        self.assertEqual(self.lines(out), ["p1", "p2"])

    def test_batch_counts_only_written_lines(self):
        """
        In a backlog, lines are buffered; when the write fails, the event at
        hand raises Retry and its line is dropped from the buffer; the
        earlier ones stay and are written first.
        """
        out = FakeRawFile()
        p = self.make(out, queued=["more"] * 3)
        p.execute(self.event(1))
        p.execute(self.event(2))
        self.assertEqual((out.data, p.lines_written), (b"", 0))
        del p.notification_pipe.pending[:]
        first = len(json_line(self.event(1).as_dict()).encode())
        out.script = [first + 3, full()]
        self.assertRaises(Retry, p.execute, self.event(3))
        self.assertEqual(p.lines_written, 1)
        out.script = []
        p.execute(self.event(3))
        self.assertEqual(self.lines(out), ["p1", "p2", "p3"])
        self.assertEqual(p.lines_written, 3)

    def test_would_block_is_a_retry(self):
        out = FakeRawFile(0)
        p = self.make(out)
        e = self.event(1)
        self.assertRaises(Retry, p.execute, e)
        p.execute(e)
        self.assertEqual(self.lines(out), ["p1"])

    def test_text_file_flush_error(self):
        """
        A text file that fails to flush got the line already: when the
        event comes again, only the flush is repeated.
        """

        class Failing(io.StringIO):
            fail = 1

            def flush(self):
                if self.fail:
                    self.fail -= 1
                    raise full()

        out = Failing()
        p = self.make(out)
        e = self.event(1)
        self.assertRaises(Retry, p.execute, e)
        p.execute(e)
        self.assertEqual([strict_loads(x)["payload"] for x in out.getvalue().splitlines()], ["p1"])
        self.assertEqual(p.lines_written, 1)

    def test_dev_full(self):
        """
        The real thing: /dev/full refuses every line; each event raises
        Retry and nothing is counted as written.
        """
        p = self.make("/dev/full")
        self.addCleanup(p.tear_down)
        for i in range(3):
            self.assertRaises(Retry, p.execute, self.event(i))
        self.assertEqual(p.lines_written, 0)

    def test_tear_down_reports_unwritten_lines(self):
        out = FakeRawFile()
        p = self.make(out, queued=["more"])
        p.execute(self.event(1))
        out.script = [full()]
        events = capture_log(self)
        p.tear_down()
        text = " ".join(formatEvent(e) for e in events)
        self.assertIn("1 buffered line(s) could not be written", text)


class StrictOutputTests(unittest.TestCase):
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
        p = JsonLinesProcessor(output=path, clock=task.Clock())
        p.notification_pipe = defer.DeferredQueue()
        p.startService()
        e = Event("notification", "c", "lone \udc80 surrogate", 1, 1.0)
        e.data = {"x": math.nan}
        p.notification_pipe.put(e)
        self.successResultOf(p.stopService())
        with open(path, "rb") as f:
            raw = f.read()
        record = strict_loads(raw.decode("utf-8"))
        self.assertEqual(record["data"], {"x": None})
        self.assertEqual(record["payload"], "lone \udc80 surrogate")


class ReopenTests(unittest.TestCase):
    def test_reopen_after_move(self):
        """
        After the file is moved away, reopen() makes the next lines go to a
        new file at the path.
        """
        path = self.mktemp()
        p = JsonLinesProcessor(output=path, clock=task.Clock())
        p.notification_pipe = defer.DeferredQueue()
        p.startService()
        p.notification_pipe.put(Event("notification", "c", "before", 1, 1.0))
        os.rename(path, path + ".1")
        self.assertTrue(p.reopen())
        p.notification_pipe.put(Event("notification", "c", "after", 1, 1.0))
        self.successResultOf(p.stopService())
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
        p = JsonLinesProcessor(output=path, clock=task.Clock())
        p.notification_pipe = defer.DeferredQueue()
        p.set_up()
        p._file.close()
        p._file = old = FakeRawFile(5, full(), full())
        e = Event("notification", "c", "half", 1, 1.0)
        self.assertRaises(Retry, p.execute, e)
        events = capture_log(self)
        self.assertTrue(p.reopen())
        self.assertIn("partly written line was dropped", formatEvent(events[-1]))
        p.execute(e)
        p.tear_down()
        self.assertEqual(len(old.data), 5)
        with open(path, encoding="utf-8") as f:
            self.assertEqual([strict_loads(x)["payload"] for x in f], ["half"])
        self.assertEqual(p.lines_written, 1)

    def test_nothing_to_reopen(self):
        p = JsonLinesProcessor(output=io.StringIO(), clock=task.Clock())
        p.startService()
        self.assertFalse(p.reopen())
        self.assertFalse(JsonLinesProcessor(output="x").reopen())  # not running
