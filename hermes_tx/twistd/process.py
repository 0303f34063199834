# -*- test-case-name: tests.test_twistd_process -*-
"""
What C{twistd hermes} does for its operator: signals and log files.

L{ProcessService} is the top of the service tree C{twistd hermes} makes.
While it runs (and only then, and only in that process: a C{.tac} or a test
using L{hermes_tx.client.Client} keeps its own handlers) it handles:

  - SIGTERM, SIGINT: stop the service tree cleanly, exit status 0.  The same
    signal again while a slow stop is under way only logs one line (the
    stop already waits at most C{--shutdown-timeout} for the event in
    progress);
  - SIGHUP: reopen twistd's log file and the processor's output file, for
    C{logrotate}'s move-then-signal rotation; delivery goes on;
  - SIGUSR1: rotate twistd's log file, as twistd itself does;

and it tunes CPython's cyclic garbage collector for a process that makes
and drops objects by the hundred thousand (L{GC_THRESHOLDS}).

twistd's own log file observer cannot be reopened from outside, so when
C{twistd hermes} logs to a file (C{--logfile}, or daemon mode's
C{twistd.log}), L{hermes_tx.twistd.options} names L{twistd_log_observer} as twistd's
C{--logger}: the same file, format and size-based rotation, but one this
module can reopen.
"""

import atexit
import gc
import os
import signal
import sys

from twisted.application import service
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger, textFileLogObserver
from twisted.python.logfile import LogFile

from hermes_tx.exceptions import one_line

#: the log file of this twistd process, when twistd hermes writes one:
#: C{{"path": ..., "file": LogFile or None}}.  twistd's C{--logger} option
#: takes a factory without arguments, hence module state.
_twistd_log = {"path": None, "file": None}


#: the collector's thresholds while twistd hermes runs (CPython's default:
#: 700, 10, 10), and the objects made at start-up are frozen out of its
#: collections (C{gc.freeze}).  Draining the outbox makes and drops a few
#: objects per change: with the default, the line where collections ran
#: (an append in the ledger) held 17% of the process's samples during a
#: no-op drain of 200,000 changes (py-spy), 6% with these; the drain rate
#: rose by 3 to 9% in alternating runs (the server's share of the work is
#: the same).
GC_THRESHOLDS = (50000, 20, 100)


def log_to_file(path):
    """
    Make L{twistd_log_observer} write to C{path}; called while options are
    parsed, before twistd calls the factory.
    """
    _twistd_log["path"] = os.path.abspath(path)


def twistd_log_observer():
    """
    twistd C{--logger} factory: a text log observer on a
    L{twisted.python.logfile.LogFile} at the path given to L{log_to_file}
    (rotated at 1 MB like twistd's), which L{reopen_log_file} reopens.
    """
    log_file = LogFile.fromFullPath(_twistd_log["path"])
    _twistd_log["file"] = log_file
    return textFileLogObserver(log_file)


def reopen_log_file():
    """
    Reopen twistd's log file, if this process writes one.

    @return: True when it was reopened.
    @raise OSError: it cannot be opened again.
    """
    log_file = _twistd_log["file"]
    if log_file is None:
        return False
    log_file.reopen()
    return True


def rotate_log_file():
    """
    Rotate twistd's log file (as twistd does on SIGUSR1), if this process
    writes one.
    """
    if _twistd_log["file"] is not None:
        _twistd_log["file"].rotate()


#: exit status for a usage or configuration error found before starting
EXIT_USAGE = 2
#: exit status when starting fails (the processor's constructor raised, the
#: status port cannot be had)
EXIT_START_FAILED = 1
#: the exit status of C{twistd hermes} after a fatal failure while running
EXIT_FAILED = 1


def fail(message, status):
    """
    Print C{message} as C{twistd hermes}' one error line and exit.
    """
    sys.stderr.write(f"twistd hermes: error: {message}\n")
    raise SystemExit(status)


def _exit_now(status):
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(status)


class ProcessService(service.MultiService):
    """
    The top of C{twistd hermes}' service tree: installs the signal handlers
    described in this module once the reactor runs after L{startService},
    and puts back the ones it replaced once every child has stopped.

    @ivar reopeners: a list of C{(name, callable)}: on SIGHUP each callable
        is called (it returns True when it reopened something; what it
        raises is logged in one line); C{name} says what in the log line.
    """

    log = Logger()

    def __init__(self, reactor=None, reopeners=(), shutdown_timeout=None):
        """
        @param reactor: the reactor; C{None} means the global one.
        @param reopeners: see L{reopeners}.
        @param shutdown_timeout: the seconds a stop waits for the event in
            progress, for the line a repeated stop signal logs.
        """
        service.MultiService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.reopeners = list(reopeners)
        self.shutdown_timeout = shutdown_timeout
        self._replaced = {}  # signal number -> the handler it had
        self._collector = None  # the collector's thresholds before ours
        self._stopping = False
        #: C{None}, or the status the process exits with (see L{fail})
        self.exit_status = None

    def startService(self):
        service.MultiService.startService(self)
        self._stopping = False
        # twistd starts services before the reactor runs, and the reactor
        # installs its own SIGINT/SIGTERM handlers as it starts: go after.
        self.reactor.callWhenRunning(self._install)

    def stopService(self):
        d = service.MultiService.stopService(self)

        def restore(result):
            for number, handler in self._replaced.items():
                signal.signal(number, handler)
            self._replaced = {}
            if self._collector is not None:
                gc.set_threshold(*self._collector)
                gc.unfreeze()
                self._collector = None
            return result

        return d.addBoth(restore)

    def _install(self):
        if not self.running or self._replaced:
            return
        wanted = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
        if _twistd_log["file"] is not None:
            wanted.append(signal.SIGUSR1)
        for number in wanted:
            self._replaced[number] = signal.signal(number, self._on_signal)
        if self._collector is None:
            self._collector = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)

    def _on_signal(self, number, frame):
        # In a signal handler: hand over to the reactor thread.
        self.reactor.callFromThread(self.handle_signal, number)

    def handle_signal(self, number):
        """
        Act on signal C{number} (in the reactor thread).
        """
        name = signal.Signals(number).name
        if number == signal.SIGHUP:
            self.reopen(name)
        elif number == signal.SIGUSR1:
            rotate_log_file()
        elif self._stopping:
            self._already_stopping(name)
        else:
            self._stopping = True
            self.log.info("Received {signal}, stopping cleanly.", signal=name)
            try:
                self.reactor.stop()
            except ReactorNotRunning:
                self._already_stopping(name)

    def fail(self, line, status=EXIT_FAILED):
        """
        Something the service cannot do without has failed for good (a
        component terminated): log C{line}, stop cleanly, and make the
        process exit with C{status}, so a supervisor restarts it.
        """
        self.log.error("{line}; stopping (exit status {status})", line=line, status=status)
        if self.exit_status is None:
            self.exit_status = status
            # twistd exits 0 after a clean stop; after its own clean-up
            # (the pid file), exit with our status instead.
            atexit.register(_exit_now, status)
        if self._stopping:
            return
        self._stopping = True
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass

    def _already_stopping(self, name):
        wait = "" if self.shutdown_timeout is None else (
            f" (waiting at most {self.shutdown_timeout:g} s for the event in progress)"
        )
        self.log.info("Received {signal} again: already stopping{wait}.", signal=name, wait=wait)

    def reopen(self, why="SIGHUP"):
        """
        Reopen twistd's log file and whatever L{reopeners} name; log one
        line saying what was reopened (and one per failure).
        """
        done = []
        reopeners = list(self.reopeners)
        if _twistd_log["file"] is not None:
            reopeners.insert(0, (f"log file {_twistd_log['file'].path}", reopen_log_file))
        for name, reopen in reopeners:
            try:
                if reopen():
                    done.append(name)
            except Exception as e:
                self.log.warn("Received {signal}: could not reopen {name}: {error}",
                              signal=why, name=name, error=one_line(e))
        self.log.info("Received {signal}: reopened {what}.", signal=why,
                      what=", ".join(done) if done else "nothing (no file to reopen)")
