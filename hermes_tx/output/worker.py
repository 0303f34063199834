# -*- test-case-name: tests.test_output_writer -*-
"""
L{ThreadWorker}: a thread of its own that runs blocking calls one at a time,
in the order given, and hands each result back to the reactor thread.

A write into a pipe nobody reads, or onto a disk that stalls, blocks only
this thread.  The reactor never waits for it: results come back with
C{callFromThread}, and stopping it only asks it to end after the calls
already given (it is never joined; it is a daemon thread, so one stuck in a
write for ever does not keep the process alive).
"""

import queue
import threading

_STOP = object()


class ThreadWorker:
    """
    Runs C{job()} calls in its thread; C{done(result, error)} is called in
    the reactor thread for each, with the job's return value or the
    exception it raised.
    """

    def __init__(self, name="hermes-output", reactor=None):
        """
        @param name: the thread's name.
        @param reactor: what C{callFromThread} is called on; C{None}
            means the global reactor.
        """
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._jobs = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job, done):
        """
        Run C{job()} after the jobs submitted before; then call
        C{done(result, None)}, or C{done(None, error)} if it raised, in the
        reactor thread.
        """
        self._jobs.put((job, done))

    def stop(self):
        """
        End the thread once the jobs submitted so far have run.  Returns at
        once.
        """
        self._jobs.put(_STOP)

    def _run(self):
        while True:
            item = self._jobs.get()
            if item is _STOP:
                return
            job, done = item
            try:
                result, error = job(), None
            except Exception as e:  # handed to the reactor thread
                result, error = None, e
            self._reactor.callFromThread(done, result, error)
