"""
A throwaway redis-server of a test's own, on a free port in a temporary
directory, that the test may stop, kill, freeze and start again (the shared
one on 6379 is never touched).  With C{durable=True} it keeps an
append-only file fsynced on every write, so what it acknowledged survives
a kill.
"""

import os
import subprocess
import tempfile

from tests.support.httpserver import free_port
from tests.support.serverprocess import ServerProcess, started


class RedisServer(ServerProcess):
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
        return self.wait_ready(lambda reply: reply.startswith((b"+PONG", b"-NOAUTH")),
                               b"PING\r\n", "redis-server")

    def kill(self):
        """SIGKILL (with C{durable}, acknowledged writes are on disk)."""
        ServerProcess.kill(self)


def start_redis(case, **kwargs):
    """
    @return: a started L{RedisServer}, destroyed when the test C{case} ends.
    """
    return started(case, RedisServer(**kwargs))
