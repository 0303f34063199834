"""
Tests for L{hermes_tx.processors}.
"""

import io
import json
import os

from twisted.internet import defer, task
from twisted.trial import unittest

from hermes_tx.events import Event
from hermes_tx.processors import FLUSH_EVERY, JsonLinesProcessor


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
