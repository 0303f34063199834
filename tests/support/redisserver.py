"""
A throwaway redis-server of a test's own, on a free port in a temporary
directory, that the test may stop, kill, freeze and start again (the shared
one on 6379 is never touched).  With C{durable=True} it keeps an
append-only file fsynced on every write, so what it acknowledged survives
a kill.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from tests.support.httpserver import free_port


class RedisServer:
    def __init__(self, durable=False, password=None):
        self.dir = tempfile.mkdtemp(prefix="hermes-redis-")
        self.port = free_port()
        self.durable = durable
        self.password = password
        self.process = None

    def start(self):
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--save", "", "--logfile", os.path.join(self.dir, "log")]
        if self.durable:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    reply = s.recv(100)
                    if reply.startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.01)

    def kill(self):
        """SIGKILL (with C{durable}, acknowledged writes are on disk)."""
        if self.process is not None:
            if self.process.poll() is None:
                os.kill(self.process.pid, signal.SIGCONT)
                self.process.kill()
            self.process.wait()
            self.process = None

    def freeze(self):
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self):
        os.kill(self.process.pid, signal.SIGCONT)

    def destroy(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_redis(case, **kwargs):
    """
    @return: a started L{RedisServer}, destroyed when the test C{case} ends.
    """
    server = RedisServer(**kwargs)
    case.addCleanup(server.destroy)
    return server.start()
