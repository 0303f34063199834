"""
A stand-in for L{hermes_tx.output.worker.ThreadWorker} in in-memory tests:
jobs run only when the test says so, in the test's thread.
"""

import errno


class ManualWorker:
    """
    Keeps submitted jobs until L{run_one} or L{run_all}.

    @ivar jobs: C{(job, done)} pairs not run yet, oldest first.
    @ivar stopped: whether C{stop} was called.
    """

    def __init__(self):
        self.jobs = []
        self.stopped = False

    def submit(self, job, done):
        self.jobs.append((job, done))

    def stop(self):
        self.stopped = True

    def run_one(self):
        """Run the oldest job and hand its result back, as the thread would."""
        job, done = self.jobs.pop(0)
        try:
            result, error = job(), None
        except Exception as e:
            result, error = None, e
        done(result, error)

    def run_all(self):
        """Run jobs (and those they lead to) until none is left."""
        while self.jobs:
            self.run_one()


class FakeRawFile:
    """
    A binary file like C{io.FileIO} whose writes follow a script: each step
    is a number of bytes to take (None: all) or an OSError to raise.  What
    it took is in C{data}.
    """

    def __init__(self, *script):
        self.script = list(script)
        self.data = b""
        self.closed = False

    def write(self, data):
        step = self.script.pop(0) if self.script else None
        if isinstance(step, OSError):
            raise step
        taken = bytes(data) if step is None else bytes(data[:step])
        self.data += taken
        return len(taken)

    def close(self):
        self.closed = True


def full():
    """@return: the error of a full disk."""
    return OSError(errno.ENOSPC, "No space left on device")
