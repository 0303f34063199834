"""
Tests for L{hermes_tx.failover.files}: L{FailoverFileWatcher} on temporary
directories and the real reactor (watchdog's inotify thread): events for
failover files only, in the reactor thread; a watched directory deleted and
made again (or moved into place, or absent at start) is watched again.  And
L{FileEventWindow}'s quick re-checks after a failover file changed, on a
L{task.Clock}.
"""

import os
import shutil
import threading

from twisted.internet import defer, task
from twisted.logger import formatEvent
from twisted.python import threadable
from twisted.trial import unittest

from hermes_tx.failover.files import RECREATED, FailoverFileWatcher, FileEventWindow
from hermes_tx.failover.roles import PRIMARY, STANDBY, UNKNOWN, RoleResult
from tests.support.shared import capture_log, sleep, wait_until


def touch(path):
    with open(path, "w"):
        pass


class _Watching:
    def setUp(self):
        super().setUp()
        self.parent = os.path.abspath(self.mktemp())
        os.makedirs(self.parent)
        self.path = os.path.join(self.parent, "data")
        self.seen = []

    def callback(self, event_type, name):
        self.seen.append((event_type, name, threadable.isInIOThread()))

    def watch(self, **kwargs):
        watcher = FailoverFileWatcher(self.path, self.callback, **kwargs)
        watcher.start()
        self.addCleanup(watcher.stop)
        return watcher

    def wait_for(self, event, since=0):
        """
        Wait until C{event} is among those seen from index C{since} on.
        """
        return wait_until(lambda: event in self.seen[since:], timeout=5, what=repr(event))

    @defer.inlineCallbacks
    def assert_watched(self, name="standby.signal"):
        """
        A failover file created and deleted in the directory now is seen.
        """
        start = len(self.seen)
        touch(os.path.join(self.path, name))
        yield self.wait_for(("created", name, True), since=start)
        os.remove(os.path.join(self.path, name))
        yield self.wait_for(("deleted", name, True), since=start)
        self.assertEqual({n for _, n, _ in self.seen[start:]}, {name})


class FailoverFileWatcherTests(_Watching, unittest.TestCase):
    @defer.inlineCallbacks
    def test_events_from_another_thread(self):
        """
        Changes made from another thread reach the callback in the reactor
        thread, for failover files only; stop() returns a Deferred that
        fires, after which nothing is delivered.
        """
        os.makedirs(self.path)
        watcher = self.watch()

        def change_files():
            with open(os.path.join(self.path, "other.txt"), "w") as f:
                f.write("unrelated")
            touch(os.path.join(self.path, "standby.signal"))
            os.remove(os.path.join(self.path, "standby.signal"))
            os.remove(os.path.join(self.path, "other.txt"))

        writer = threading.Thread(target=change_files)
        writer.start()
        yield self.wait_for(("deleted", "standby.signal", True))
        writer.join()
        seen = self.seen
        self.assertIn(("created", "standby.signal", True), seen)
        self.assertLess(
            seen.index(("created", "standby.signal", True)),
            seen.index(("deleted", "standby.signal", True)),
        )
        self.assertEqual({name for _, name, _ in seen}, {"standby.signal"})
        self.assertEqual({in_reactor for _, _, in_reactor in seen}, {True})
        # Opening and closing a file are not changes (watchdog reports both).
        self.assertLessEqual({kind for kind, _, _ in seen}, {"created", "modified", "deleted"})

        stopping = watcher.stop()
        self.assertIsInstance(stopping, defer.Deferred)
        fired = []
        stopping.addCallback(fired.append)
        yield stopping
        self.assertEqual(fired, [None])
        count = len(seen)
        touch(os.path.join(self.path, "standby.signal"))
        yield sleep(0.3)
        self.assertEqual(len(seen), count)
        # Stopping again is harmless.
        self.assertEqual((yield watcher.stop()), None)

    @defer.inlineCallbacks
    def test_every_failover_file(self):
        os.makedirs(self.path)
        self.watch()
        for name in ("recovery.conf", "recovery.signal", "promote"):
            yield self.assert_watched(name)
        # PostgreSQL <= 11 renames recovery.conf on promotion.
        touch(os.path.join(self.path, "recovery.conf"))
        os.rename(os.path.join(self.path, "recovery.conf"), os.path.join(self.path, "recovery.done"))
        yield wait_until(lambda: any(kind == "moved" for kind, _, _ in self.seen), timeout=5,
                         what="moved event")

    @defer.inlineCallbacks
    def test_own_failover_files(self):
        os.makedirs(self.path)
        self.watch(failover_files=["trigger"])
        touch(os.path.join(self.path, "standby.signal"))
        touch(os.path.join(self.path, "trigger"))
        yield self.wait_for(("created", "trigger", True))
        self.assertEqual({n for _, n, _ in self.seen}, {"trigger"})

    @defer.inlineCallbacks
    def test_recreated_directory(self):
        """
        The data directory is deleted and made again (C{patronictl
        reinit}, a fresh C{pg_basebackup}): a C{"recreated"} callback, and
        failover files in the new directory are seen.
        """
        os.makedirs(self.path)
        touch(os.path.join(self.path, "standby.signal"))
        self.watch()
        yield self.assert_watched("promote")
        for _ in range(2):
            start = len(self.seen)
            shutil.rmtree(self.path)
            yield self.wait_for(("deleted", "standby.signal", True), since=start)
            os.makedirs(self.path)
            yield self.wait_for((RECREATED, "data", True), since=start)
            yield self.assert_watched()
            touch(os.path.join(self.path, "standby.signal"))
            yield self.wait_for(("created", "standby.signal", True), since=start)

    @defer.inlineCallbacks
    def test_directory_moved_into_place(self):
        """
        A clone made beside the old directory and renamed to its name.
        """
        os.makedirs(self.path)
        self.watch()
        clone = os.path.join(self.parent, "data.new")
        os.makedirs(clone)
        touch(os.path.join(clone, "standby.signal"))
        shutil.rmtree(self.path)
        os.rename(clone, self.path)
        yield self.wait_for((RECREATED, "data", True))
        os.remove(os.path.join(self.path, "standby.signal"))
        yield self.wait_for(("deleted", "standby.signal", True))

    @defer.inlineCallbacks
    def test_directory_absent_at_start(self):
        """
        A data directory that does not exist yet (a standby still being
        cloned): start() warns, and the directory is watched once made.
        """
        logged = capture_log(self)
        self.watch()
        warnings = [formatEvent(e) for e in logged if e.get("log_namespace", "").startswith("hermes_tx.failover.files")]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("cannot watch", warnings[0])
        os.makedirs(self.path)
        yield self.wait_for((RECREATED, "data", True))
        yield self.assert_watched()

    @defer.inlineCallbacks
    def test_unrelated_names_in_the_parent(self):
        os.makedirs(self.path)
        self.watch()
        os.makedirs(os.path.join(self.parent, "data2"))
        os.makedirs(os.path.join(self.parent, "dat"))
        touch(os.path.join(self.parent, "standby.signal"))
        yield self.assert_watched()
        self.assertEqual([s for s in self.seen if s[0] == RECREATED], [])

    @defer.inlineCallbacks
    def test_nothing_after_stop(self):
        os.makedirs(self.path)
        watcher = self.watch()
        yield watcher.stop()
        shutil.rmtree(self.path)
        os.makedirs(self.path)
        touch(os.path.join(self.path, "standby.signal"))
        yield sleep(0.3)
        self.assertEqual(self.seen, [])

    @defer.inlineCallbacks
    def test_stop_twice_and_before_start(self):
        os.makedirs(self.path)
        watcher = FailoverFileWatcher(self.path, self.callback)
        self.assertEqual((yield watcher.stop()), None)
        watcher.start()
        first, second = watcher.stop(), watcher.stop()
        self.assertEqual((yield first), None)
        self.assertEqual((yield second), None)

    @defer.inlineCallbacks
    def test_parent_absent(self):
        self.path = os.path.join(self.parent, "no", "such", "data")
        capture_log(self)
        watcher = self.watch()
        self.assertEqual((yield watcher.stop()), None)


class FileEventWindowTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.checks = []

    def check_now(self):
        d = defer.Deferred()
        self.checks.append(d)
        return d

    def window(self, before=STANDBY, window=1.0, interval=0.25):
        # Quarters keep the clock's sums exact.
        return FileEventWindow(self.clock, self.check_now, before, window=window, interval=interval)

    def answer(self, role):
        self.checks[-1].callback(RoleResult(role, None, ()))

    def test_checks_until_the_role_differs(self):
        w = self.window()
        self.assertTrue(w.open)
        self.assertEqual(self.checks, [])
        w.start()
        self.assertEqual(len(self.checks), 1)
        self.answer(STANDBY)
        self.assertEqual(len(self.checks), 1)
        self.clock.advance(0.25)
        self.assertEqual(len(self.checks), 2)
        self.answer(STANDBY)
        self.clock.advance(0.25)
        self.answer(PRIMARY)
        self.assertFalse(w.open)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(len(self.checks), 3)

    def test_demotion(self):
        w = self.window(before=PRIMARY)
        w.start()
        self.answer(STANDBY)
        self.assertFalse(w.open)

    def test_closes_at_once_on_unknown(self):
        """
        No host answers: nothing to watch for; the window closes rather
        than re-checking every interval.
        """
        w = self.window()
        w.start()
        self.answer(UNKNOWN)
        self.assertFalse(w.open)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.checks), 1)

    def test_closes_at_the_deadline(self):
        w = self.window(window=1.0, interval=0.25)
        w.start()
        times = []
        while w.open:
            times.append(self.clock.seconds())
            self.answer(STANDBY)
            if w.open:
                self.clock.advance(0.25)
        self.assertEqual(times, [0, 0.25, 0.5, 0.75, 1.0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_slow_check_past_the_deadline(self):
        w = self.window(window=1.0)
        w.start()
        self.clock.advance(3)
        self.answer(STANDBY)
        self.assertFalse(w.open)
        self.assertEqual(len(self.checks), 1)

    def test_extend(self):
        w = self.window(window=1.0)
        w.start()
        times = []
        while w.open:
            times.append(self.clock.seconds())
            if self.clock.seconds() == 0.5:
                w.extend()
            self.answer(STANDBY)
            if w.open:
                self.clock.advance(0.25)
        self.assertEqual(times, [0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5])

    def test_close_while_waiting_leaves_no_timer(self):
        w = self.window()
        w.start()
        self.answer(STANDBY)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        w.close()
        self.assertFalse(w.open)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        w.close()

    def test_close_during_a_check(self):
        """
        The check in flight answers after close(): no timer, no check.
        """
        w = self.window()
        w.start()
        w.close()
        self.answer(STANDBY)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(len(self.checks), 1)

    def test_start_after_close(self):
        w = self.window()
        w.close()
        w.start()
        self.assertEqual(self.checks, [])

    def test_synchronous_checks(self):
        answers = [STANDBY, STANDBY, PRIMARY]
        w = FileEventWindow(self.clock, lambda: defer.succeed(RoleResult(answers.pop(0), None, ())),
                            STANDBY, window=1.0, interval=0.25)
        w.start()
        self.clock.advance(0.25)
        self.assertTrue(w.open)
        self.clock.advance(0.25)
        self.assertFalse(w.open)
        self.assertEqual(answers, [])
