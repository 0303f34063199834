# -*- test-case-name: tests.test_sink_redis -*-
"""
L{RedisBatchProtocol}: txredisapi's Redis protocol with a batch path for
the Redis Streams sink.
"""

import txredisapi
from twisted.internet import defer


def command(args):
    """
    @return: C{args} (a list of bytes) as one command in the Redis
        protocol (RESP).
    """
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


class BatchLost(txredisapi.ConnectionError):
    """
    The connection was lost before every command of a batch was answered.

    @ivar replies: the replies that did arrive, in order.
    """

    def __init__(self, replies):
        txredisapi.ConnectionError.__init__(self, "Lost connection")
        self.replies = replies


class RedisBatchProtocol(txredisapi.RedisProtocol):
    """
    txredisapi's protocol (connecting, AUTH, SELECT, reply parsing) with a
    batch path for the sink: L{send_batch} writes a whole batch of encoded
    commands at once and collects their replies in one list, one Deferred
    per batch instead of two per command.

    Its line reader also hands the rest of the buffer back through
    C{callLater(0)} after each bulk reply (a reactor turn per XADD answer);
    here the rest is read in a loop at once.
    """

    _rest = None
    _batch = None  # (count, replies, Deferred) while a batch is answered

    def send_batch(self, commands):
        """
        Write C{commands} (encoded with L{command}) in one go.

        @return: a Deferred firing with their replies in order (an entry
            id, or a C{ResponseError}), or failing with L{BatchLost}.
            Cancelling it aborts the connection (the replies can no longer
            be matched).
        """
        if not self.connected or self._batch is not None:
            return defer.fail(txredisapi.ConnectionError("Not connected"))
        d = defer.Deferred(lambda _: self.transport.abortConnection())
        self._batch = (len(commands), [], d)
        self.transport.write(b"".join(commands))
        return d

    def replyReceived(self, reply):
        if self._batch is None:
            return txredisapi.RedisProtocol.replyReceived(self, reply)
        count, replies, d = self._batch
        replies.append(reply)
        if len(replies) == count:
            self._batch = None
            d.callback(replies)
        return None

    def connectionLost(self, why):
        batch, self._batch = self._batch, None
        if batch is not None and not batch[2].called:
            batch[2].errback(BatchLost(batch[1]))
        return txredisapi.RedisProtocol.connectionLost(self, why)

    def setLineMode(self, extra=b""):
        self.line_mode = 1
        if extra:
            self._rest.append(extra)

    def dataReceived(self, data, unpause=False):
        if self._rest is not None:  # called from within the loop below
            self._rest.append(data)
            return None
        self._rest = [data]
        try:
            while self._rest:
                why = txredisapi.LineReceiver.dataReceived(self, self._rest.pop(0))
                if why:
                    return why
        finally:
            self._rest = None
        return None
