# -*- test-case-name: tests.test_failover -*-
"""
L{FailoverFileWatcher}: tell the reactor when a failover file changes in a
PostgreSQL data directory.

PostgreSQL 12+ deletes C{standby.signal} on promotion (2-3 ms before
C{pg_is_in_recovery()} turns false) and creates/deletes C{promote};
PostgreSQL <= 11 renames C{recovery.conf} to C{recovery.done}.
"""

import os

from twisted.internet import threads
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

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


class _Handler(FileSystemEventHandler):
    def __init__(self, names, deliver):
        self.names = names
        self.deliver = deliver

    def on_any_event(self, event):
        # Runs in watchdog's thread: only look at names here, and let the
        # reactor thread do the rest.  Opening or closing a file changes
        # nothing (watchdog 7 reports both).
        if event.event_type not in CHANGES:
            return
        paths = [getattr(event, "src_path", ""), getattr(event, "dest_path", "")]
        for path in paths:
            if path and os.path.basename(os.fsdecode(path)) in self.names:
                self.deliver(event.event_type, os.path.basename(os.fsdecode(path)))
                return


class FailoverFileWatcher:
    """
    Watches one directory (not recursively) and calls
    C{callback(event_type, file_name)} in the reactor thread for each change
    of a failover file.
    """

    def __init__(self, path, callback, failover_files=None, reactor=None):
        """
        @param path: the directory to watch (a PostgreSQL data directory).
        @param callback: called in the reactor thread with the watchdog event
            type (C{"created"}, C{"deleted"}, C{"moved"} ...) and file name.
        @param failover_files: the file names that count;
            C{None} means L{DEFAULT_FAILOVER_FILES}.
        @param reactor: the reactor to hand events to.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.path = path
        self.reactor = reactor
        self.failover_files = frozenset(failover_files or DEFAULT_FAILOVER_FILES)
        self._callback = callback
        self._observer = None

    def _deliver(self, event_type, name):
        self.reactor.callFromThread(self._callback, event_type, name)

    def start(self):
        self._observer = Observer()
        self._observer.schedule(
            _Handler(self.failover_files, self._deliver), self.path, recursive=False
        )
        self._observer.start()

    def stop(self):
        """
        @return: a Deferred firing once watchdog's thread has ended (joined
            in a worker thread, so the reactor never waits).
        """
        observer, self._observer = self._observer, None
        if observer is None:
            from twisted.internet import defer

            return defer.succeed(None)
        observer.stop()
        return threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), observer.join
        )
