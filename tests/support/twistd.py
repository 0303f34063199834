"""
Running the real C{twistd hermes} process from tests.
"""

import os
import sys

from twisted.internet import defer, protocol, reactor

from hermes_tx.events import strict_json_loads

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Twistd(protocol.ProcessProtocol):
    """
    Collects a child's output and its exit.
    """

    def __init__(self):
        self.out = b""
        self.err = b""
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.ended.callback(reason.value)

    def records(self):
        """
        @return: the JSON lines on standard output, parsed strictly (RFC
            8259: no NaN, no Infinity).
        """
        return [strict_json_loads(line) for line in self.out.decode("utf-8").splitlines()]


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_twistd(args, env_extra=None, twistd_args=("-n", "--pidfile=")):
    """
    Start C{twistd -n --pidfile= hermes ARGS} (other twistd options with
    C{twistd_args}), without C{HERMES_DSN} or C{PG*} variables unless
    C{env_extra} sets them.

    @return: the L{Twistd} protocol and the process transport.
    """
    env = {k: v for k, v in os.environ.items() if k != "HERMES_DSN" and not k.startswith("PG")}
    env.update(PYTHONPATH=ROOT, **(env_extra or {}))
    proto = Twistd()
    transport = reactor.spawnProcess(
        proto, TWISTD, [TWISTD, *twistd_args, "hermes"] + args, env=env, path=ROOT
    )
    return proto, transport
