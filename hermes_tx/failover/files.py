# -*- test-case-name: tests.test_failover_files -*-
"""
Failover files: L{FailoverFileWatcher} tells the reactor when a failover
file changes in a PostgreSQL data directory, even after the directory is
deleted and made again; L{FileEventWindow} is the burst of quick role
checks that follows.

PostgreSQL 12+ deletes C{standby.signal} on promotion (2-3 ms before
C{pg_is_in_recovery()} turns false) and creates/deletes C{promote};
PostgreSQL <= 11 renames C{recovery.conf} to C{recovery.done}.

C{patronictl reinit}, or a C{pg_basebackup} into a fresh directory, deletes
the data directory and makes a new one at the same path: a watch on the old
directory dies with it.  So the parent directory is watched too (not
recursively, for the data directory's own name only), and the watch on the
data directory is re-armed whenever it appears again.
"""

import os

from twisted.internet import defer, threads
from twisted.logger import Logger
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from hermes_tx.failover.roles import UNKNOWN

#: The files whose changes mean a role change may be under way.
DEFAULT_FAILOVER_FILES = (
    "recovery.conf",
    "recovery.done",
    "standby.signal",
    "recovery.signal",
    "promote",
)

#: watchdog event types that change a file (not opened/closed).
CHANGES = frozenset(["created", "deleted", "moved", "modified"])

#: the event type passed to the callback when the directory was made again
RECREATED = "recreated"


def _names(event):
    paths = [getattr(event, "src_path", ""), getattr(event, "dest_path", "")]
    return [os.fsdecode(p) for p in paths if p]


class _FileHandler(FileSystemEventHandler):
    """
    In the data directory: failover files.  Runs in watchdog's thread, so it
    only looks at names and hands the rest to the reactor thread.
    """

    def __init__(self, names, deliver):
        self.names = names
        self.deliver = deliver

    def on_any_event(self, event):
        # Opening or closing a file changes nothing (watchdog 7 reports both).
        if event.event_type not in CHANGES:
            return
        for path in _names(event):
            name = os.path.basename(path)
            if name in self.names:
                self.deliver(event.event_type, name)
                return


class _ParentHandler(FileSystemEventHandler):
    """
    In the parent directory: the data directory itself appearing again.
    """

    def __init__(self, path, appeared):
        self.path = path
        self.appeared = appeared

    def on_any_event(self, event):
        if event.event_type not in ("created", "moved"):
            return
        target = getattr(event, "dest_path", "") or getattr(event, "src_path", "")
        if os.path.normpath(os.fsdecode(target)) == self.path:
            self.appeared()


class FailoverFileWatcher:
    """
    Watches one directory (not recursively) and calls
    C{callback(event_type, file_name)} in the reactor thread for each change
    of a failover file, and C{callback("recreated", directory_name)} when
    the directory was deleted and made again (its watch is then re-armed).
    """

    log = Logger()

    def __init__(self, path, callback, failover_files=None, reactor=None):
        """
        @param path: the directory to watch (a PostgreSQL data directory).
        @param callback: called in the reactor thread with the watchdog event
            type (C{"created"}, C{"deleted"}, C{"moved"} ... or
            L{RECREATED}) and file name.
        @param failover_files: the file names that count;
            C{None} means L{DEFAULT_FAILOVER_FILES}.
        @param reactor: the reactor to hand events to.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.path = os.path.normpath(os.path.abspath(path))
        self.reactor = reactor
        self.failover_files = frozenset(failover_files or DEFAULT_FAILOVER_FILES)
        self._callback = callback
        self._observer = None
        self._watch = None  # watchdog's handle of the data directory's watch

    def _deliver(self, event_type, name):
        self.reactor.callFromThread(self._callback, event_type, name)

    def start(self):
        """
        Start watching.  A directory that does not exist yet (a standby
        still being cloned) is watched once it is made, with a warning now.
        """
        # Start the observer first: watchdog starts the watches scheduled
        # before Observer.start() inside it and re-raises their errors
        # (FileNotFoundError for a missing directory); scheduled on a
        # running observer, each watch fails on its own.
        self._observer = Observer()
        self._observer.start()
        parent = os.path.dirname(self.path)
        try:
            self._observer.schedule(_ParentHandler(self.path, self._appeared), parent, recursive=False)
        except OSError as e:
            self.log.warn("cannot watch {path}: {error}", path=parent, error=e)
        self._arm()

    def _arm(self):
        """
        Watch the data directory (again).  Runs in the reactor thread.

        @return: True when it is watched now.
        """
        observer = self._observer
        if observer is None:
            return False
        if self._watch is not None:
            try:
                observer.unschedule(self._watch)
            except Exception:
                pass  # its emitter ended with the old directory
            self._watch = None
        try:
            self._watch = observer.schedule(
                _FileHandler(self.failover_files, self._deliver), self.path, recursive=False
            )
        except OSError as e:
            self.log.warn("cannot watch {path}: {error}", path=self.path, error=e)
            return False
        return True

    def _appeared(self):
        # watchdog's thread: re-arm in the reactor thread.
        self.reactor.callFromThread(self._rearm)

    def _rearm(self):
        if self._observer is None:
            return
        if self._arm():
            self.log.info("{path} was made again; watching it again", path=self.path)
            self._callback(RECREATED, os.path.basename(self.path))

    def stop(self):
        """
        @return: a Deferred firing once watchdog's thread has ended (joined
            in a worker thread, so the reactor never waits).
        """
        observer, self._observer = self._observer, None
        self._watch = None
        if observer is None:
            return defer.succeed(None)

        def stop_and_join():
            # watchdog's stop() joins its emitter threads: not on the
            # reactor's thread.
            observer.stop()
            observer.join()

        return threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), stop_and_join
        )


class FileEventWindow:
    """
    After a failover file changed: check the role now, and again every
    C{interval} seconds until it differs from what it was, for at most
    C{window} seconds, because PostgreSQL deletes C{standby.signal} a few
    milliseconds before it leaves recovery.  While no host answers there is
    nothing to watch for: the window closes and the schedule goes on.

    One window at a time: a file event during a window extends it.
    """

    log = Logger()

    def __init__(self, clock, check_now, role_before, window=1.0, interval=0.01):
        """
        @param check_now: returns a Deferred firing with a role check's
            L{hermes_tx.failover.roles.RoleResult}.
        """
        self.clock = clock
        self.check_now = check_now
        self.before = role_before
        self.interval = interval
        self.deadline = clock.seconds() + window
        self.window = window
        self._timer = None
        self._closed = False

    @property
    def open(self):
        return not self._closed

    def extend(self):
        self.deadline = self.clock.seconds() + self.window

    def start(self):
        self._check()

    def _check(self):
        self._timer = None
        if not self._closed:
            self.check_now().addCallback(self._checked)

    def _checked(self, result):
        if self._closed:
            return
        if result.role != self.before or result.role == UNKNOWN or self.clock.seconds() >= self.deadline:
            self.close()
            return
        self._timer = self.clock.callLater(self.interval, self._check)

    def close(self):
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
