"""
L{ServerProcess}: what the servers tests run of their own (redis-server,
nats-server) share: a process in a temporary directory that a test may
stop, kill, freeze, thaw and start again, and that is destroyed with the
directory when the test ends (L{started}).
"""

import os
import shutil
import signal
import socket
import time


class ServerProcess:
    """
    Subclasses set C{self.dir} (made by them, removed by L{destroy}) and
    implement C{start} (setting C{self.process}, a C{subprocess.Popen}, and
    returning C{self} once the server answers).
    """

    process = None
    dir = None
    port = None

    def wait_ready(self, ready, hello=b"", what="server"):
        """
        Poll C{self.port} until the server's first answer (to C{hello})
        satisfies C{ready(bytes)}.

        @return: C{self}.
        @raise RuntimeError: not within 10 s, or the process ended.
        """
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    if hello:
                        s.sendall(hello)
                    if ready(s.recv(4096)):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"{what} on port {self.port} did not start")
            time.sleep(0.01)

    def _end(self, send):
        if self.process is not None:
            if self.process.poll() is None:
                os.kill(self.process.pid, signal.SIGCONT)
                send(self.process)
            self.process.wait()
            self.process = None

    def stop(self):
        """SIGTERM, and wait: a clean shutdown."""
        self._end(lambda process: process.terminate())

    def kill(self):
        """SIGKILL, and wait."""
        self._end(lambda process: process.kill())

    def freeze(self):
        """
        SIGSTOP, and wait until every thread stopped: C{kill} returns
        before a busy process is stopped, and a request sent meanwhile
        could still be answered.
        """
        os.kill(self.process.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        tasks = f"/proc/{self.process.pid}/task"
        while time.monotonic() < deadline:
            try:
                states = []
                for tid in os.listdir(tasks):
                    with open(f"{tasks}/{tid}/stat") as f:
                        states.append(f.read().rpartition(")")[2].split()[0])
            except OSError:
                return  # no /proc here, or a thread just ended: as good as it gets
            if all(state in "Tt" for state in states):
                return
            time.sleep(0.001)

    def thaw(self):
        os.kill(self.process.pid, signal.SIGCONT)

    def destroy(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def started(case, server):
    """
    @return: C{server} started, destroyed when the test C{case} ends.
    """
    case.addCleanup(server.destroy)
    return server.start()
