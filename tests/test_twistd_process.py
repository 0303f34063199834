"""
Tests for L{hermes_tx.twistd.process}: signals and log files of C{twistd
hermes}.  The real process is run in tests.test_twistd.
"""

import gc
import os
import signal

from twisted.internet.error import ReactorNotRunning
from twisted.logger import formatEvent
from twisted.trial import unittest

from hermes_tx.twistd import process as operations
from hermes_tx.twistd.process import GC_THRESHOLDS, ProcessService
from tests.support.shared import capture_log


class FakeReactor:
    """
    Runs callWhenRunning and callFromThread calls at once; counts stops,
    raising ReactorNotRunning after the first as the real one does.
    """

    def __init__(self):
        self.stops = 0

    def callWhenRunning(self, f, *args):
        f(*args)

    def callFromThread(self, f, *args):
        f(*args)

    def stop(self):
        self.stops += 1
        if self.stops > 1:
            raise ReactorNotRunning()


def messages(events):
    return [formatEvent(e) for e in events]


class ProcessServiceTests(unittest.TestCase):
    WATCHED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)

    def setUp(self):
        self.reactor = FakeReactor()
        self.log = capture_log(self)
        self.before = [signal.getsignal(n) for n in self.WATCHED]
        self.addCleanup(self.restore_signals)
        saved = dict(operations._twistd_log)
        self.addCleanup(operations._twistd_log.update, saved)

    def restore_signals(self):
        for number, handler in zip(self.WATCHED, self.before):
            signal.signal(number, handler)

    def make(self, **kwargs):
        return ProcessService(reactor=self.reactor, **kwargs)

    def test_installs_while_running_only(self):
        top = self.make()
        self.assertEqual([signal.getsignal(n) for n in self.WATCHED], self.before)
        top.startService()
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.assertEqual(signal.getsignal(number), top._on_signal)
        # No log file of ours: SIGUSR1 stays as it was.
        self.assertEqual(signal.getsignal(signal.SIGUSR1), self.before[3])
        self.successResultOf(top.stopService())
        self.assertEqual([signal.getsignal(n) for n in self.WATCHED], self.before)

    def test_tunes_the_collector_while_running(self):
        """
        While it runs, the collector has GC_THRESHOLDS and the objects made
        before are frozen; once stopped, both are as they were.
        """
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.addCleanup(gc.unfreeze)
        top = self.make()
        top.startService()
        self.assertEqual(gc.get_threshold(), GC_THRESHOLDS)
        self.assertGreater(gc.get_freeze_count(), 0)
        self.successResultOf(top.stopService())
        self.assertEqual(gc.get_threshold(), before)
        self.assertEqual(gc.get_freeze_count(), 0)

    def test_real_signal_stops_once_then_logs_quietly(self):
        """
        A stop signal stops the reactor; the same signal (or the other)
        again while stopping logs one quiet line each, no traceback.
        """
        top = self.make(shutdown_timeout=2.5)
        top.startService()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        top.handle_signal(signal.SIGTERM)
        self.assertEqual(self.reactor.stops, 1)
        self.assertEqual(messages(self.log), [
            "Received SIGTERM, stopping cleanly.",
            "Received SIGINT again: already stopping "
            "(waiting at most 2.5 s for the event in progress).",
            "Received SIGTERM again: already stopping "
            "(waiting at most 2.5 s for the event in progress).",
        ])
        self.successResultOf(top.stopService())

    def test_reactor_already_stopping(self):
        """
        When something else stopped the reactor first, a signal only logs.
        """
        self.reactor.stops = 1
        top = self.make()
        top.handle_signal(signal.SIGINT)
        self.assertEqual(messages(self.log)[-1], "Received SIGINT again: already stopping.")

    def test_sighup_reopens(self):
        calls = []

        def failing():
            raise PermissionError(13, "Permission denied")

        top = self.make(reopeners=[("output file", lambda: calls.append(1) or True),
                                   ("nothing", lambda: False), ("broken", failing)])
        top.startService()
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(calls, [1])
        self.assertEqual(messages(self.log), [
            "Received SIGHUP: could not reopen broken: PermissionError: [Errno 13] "
            "Permission denied",
            "Received SIGHUP: reopened output file.",
        ])
        self.assertEqual(self.reactor.stops, 0)
        self.successResultOf(top.stopService())

    def test_sighup_with_nothing_to_reopen(self):
        self.make().handle_signal(signal.SIGHUP)
        self.assertEqual(messages(self.log),
                         ["Received SIGHUP: reopened nothing (no file to reopen)."])

    def test_log_file_reopen_and_rotate(self):
        """
        The twistd log observer writes to a file that SIGHUP reopens (after
        a move) and SIGUSR1 rotates.
        """
        path = os.path.abspath(self.mktemp())
        operations.log_to_file(path)
        observer = operations.twistd_log_observer()
        log_file = operations._twistd_log["file"]
        self.addCleanup(log_file.close)
        top = self.make()
        top.startService()
        self.assertEqual(signal.getsignal(signal.SIGUSR1), top._on_signal)
        observer({"log_format": "first", "log_time": 0.0, "log_level": None})
        os.rename(path, path + ".moved")
        os.kill(os.getpid(), signal.SIGHUP)
        observer({"log_format": "second", "log_time": 0.0, "log_level": None})
        log_file.flush()
        with open(path + ".moved") as f:
            self.assertIn("first", f.read())
        with open(path) as f:
            self.assertIn("second", f.read())
        self.assertEqual(messages(self.log)[-1], f"Received SIGHUP: reopened log file {path}.")
        os.kill(os.getpid(), signal.SIGUSR1)
        self.assertTrue(os.path.exists(path + ".1"))
        self.successResultOf(top.stopService())
