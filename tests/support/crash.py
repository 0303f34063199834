# -*- test-case-name: tests.test_pgcluster -*-
"""
L{CrashOperations}: kill a throwaway server as a crashed machine would
(a mixin of L{tests.support.pgcluster.Cluster}; Linux C{/proc} only).
"""

import os
import signal
import time


def _stat(pid):
    """
    @return: the fields of C{/proc/PID/stat} after the command name (state
        first, then the parent pid), or C{None} if there is no such process.
    """
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _alive(pid, zombie=False):
    """
    @param zombie: count a zombie (dead, not yet reaped) as alive.
    @return: whether process C{pid} exists (and, unless C{zombie}, runs).
    """
    fields = _stat(pid)
    return fields is not None and (zombie or fields[0] != "Z")


def _children(pid):
    """@return: the pids whose parent is C{pid}."""
    children = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat(int(name))
            if fields is not None and int(fields[1]) == pid:
                children.append(int(name))
    return children


class CrashOperations(object):
    """
    C{crash()} for a L{tests.support.pgcluster.Cluster}, whose C{start()}
    calls L{_wait_reaped} first.
    """

    _crashed = ()  # pids killed by crash(), maybe not yet reaped

    def postmaster_pid(self):
        """
        @return: the postmaster's pid (first line of C{postmaster.pid}), or
            C{None} if there is no such file.
        """
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid")) as f:
                return int(f.readline())
        except (FileNotFoundError, ValueError):
            return None

    def crash(self):
        """
        Kill the server as a crashed machine would: SIGKILL the postmaster
        and every one of its children at once (the postmaster is frozen
        first, so it cannot fork meanwhile), leaving C{postmaster.pid}
        and the data directory as they were.  L{start} afterwards does
        crash recovery and comes back in the same role.

        @return: C{time.monotonic()} just after the kill.
        @raise RuntimeError: no server is running.
        """
        pid = self.postmaster_pid()
        if pid is None or not _alive(pid):
            raise RuntimeError("no server running in %s" % (self.data_dir,))
        os.kill(pid, signal.SIGSTOP)
        victims = [pid] + _children(pid)
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:  # a child that had just exited
                pass
        killed = time.monotonic()
        self._crashed = victims
        return killed

    def _wait_reaped(self, timeout=15.0):
        """
        Wait until the processes L{crash} killed are gone from the process
        table.  (Here PID 1 reaps orphans only every second or two, and a
        zombie postmaster still holding its pid makes a new one refuse to
        start: "lock file postmaster.pid already exists".)
        """
        deadline = time.monotonic() + timeout
        while any(_alive(pid, zombie=True) for pid in self._crashed):
            if time.monotonic() > deadline:
                raise RuntimeError("killed processes %s not reaped after %ss"
                                   % (self._crashed, timeout))
            time.sleep(0.02)
        self._crashed = []

