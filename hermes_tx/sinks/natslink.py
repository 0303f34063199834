# -*- test-case-name: tests.test_sink_nats -*-
"""
L{Link}: one nats-py connection of the NATS sink, and the JetStream
publishes awaiting their acknowledgement on it.

nats-py is kept from acting on its own: it does not reconnect (a lost
connection ends the link; the sink's next batch makes another,
L{hermes_tx.sinks.connecting.OnDemand}) and does not buffer while
disconnected.  Publishes are sent with nats-py's plain C{publish}, each
with a reply subject of the link's own (one subscription per link), and
the acknowledgements are read here (L{answer}): nats-py's C{publish_async}
leaves the future of a publish JetStream refused (a full stream) pending
forever and hands the error, without saying whose it is, to the error
callback.

Whatever nats-py leaves pending is settled here: when the connection is
lost or closed, every publish still waiting fails with L{Lost}; when the
server refuses a publish or the link's reply subscription (a permissions
violation, which nats-py only reports to its error callback), the
publishes it concerns fail with L{Refused} at once, not at the batch's
deadline.
"""

import asyncio
import itertools
import json

import nats
from nats.errors import MaxPayloadError
from nats.js.errors import BadRequestError, NotFoundError

from hermes_tx.exceptions import one_line

#: seconds a link's close may take (it flushes what is buffered) before it
#: is given up on
CLOSE_TIMEOUT = 5.0
#: the JetStream error code for "stream name already in use" (another
#: process made it first)
STREAM_NAME_IN_USE = 10058


class Lost(Exception):
    """
    The connection ended before the publish was acknowledged (it may or may
    not be stored: its C{Nats-Msg-Id} makes a retry safe).
    """


class Refused(Exception):
    """
    The server refused the publish or the subscription its acknowledgement
    comes back on (a permissions violation).
    """


class NoStream(Exception):
    """
    No JetStream stream captures the subject (the server answered "no
    responders").

    @ivar subject: the subject.
    """

    def __init__(self, subject):
        Exception.__init__(self, subject)
        self.subject = subject


class TooLarge(Exception):
    """
    The message is larger than the server's C{max_payload}.
    """


class JetStreamError(Exception):
    """
    JetStream answered a publish with an error.

    @ivar code: its HTTP-like code (503, 400 ...).
    @ivar err_code: its JetStream error code (10077 for a full stream ...).
    @ivar description: its text.
    """

    def __init__(self, code, err_code, description):
        Exception.__init__(self, f"{description} (JetStream error {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description


class Ack:
    """
    A publish acknowledgement.

    @ivar stream: the stream that stored the message.
    @ivar seq: its sequence number there.
    @ivar duplicate: whether it was stored before (same C{Nats-Msg-Id}
        within the stream's duplicate window): stored once, and done.
    """

    def __init__(self, stream, seq, duplicate):
        self.stream = stream
        self.seq = seq
        self.duplicate = duplicate


def answer(msg, subject):
    """
    @param msg: the reply to a JetStream publish (a nats-py C{Msg}).
    @param subject: the subject published to.
    @return: an L{Ack}, or the exception saying why it was not stored
        (L{NoStream}, L{JetStreamError}).
    """
    headers = msg.headers or {}
    if headers.get("Status") == "503":
        return NoStream(subject)
    try:
        reply = json.loads(msg.data)
    except ValueError:
        return JetStreamError(None, None, f"an answer that is not JSON: {msg.data[:100]!r}")
    if not isinstance(reply, dict):
        return JetStreamError(None, None, f"an unexpected answer: {msg.data[:100]!r}")
    error = reply.get("error")
    if error is not None:
        if not isinstance(error, dict):
            error = {"description": str(error)}
        return JetStreamError(error.get("code"), error.get("err_code"),
                              " ".join(str(error.get("description")).split()))
    return Ack(reply.get("stream"), reply.get("seq"), bool(reply.get("duplicate")))


class _Batch:
    """The publishes of one call of L{Link.publish} still waiting."""

    def __init__(self, settle):
        self.settle = settle
        self.waiting = 0
        self.all_sent = False
        self.done = asyncio.get_running_loop().create_future()

    def answered(self, key, result):
        self.waiting -= 1
        self.settle(key, result)
        self.check()

    def check(self):
        if self.all_sent and self.waiting == 0 and not self.done.done():
            self.done.set_result(None)


class Link:
    """
    @ivar nc: the nats-py client.
    @ivar refused: C{None}, or the L{Refused} that makes this link useless
        (its reply subscription was refused): L{alive} is false then.
    @ivar refusal: C{None}, or the last L{Refused} the server sent.
    """

    def __init__(self):
        self.nc = nats.NATS()
        self.js = None
        self.refused = None
        self.refusal = None
        self._last_error = None
        self._waiting = {}  # reply token -> (batch, key, subject)
        self._tokens = itertools.count()
        self._prefix = None
        self._api_refused = None

    @property
    def max_payload(self):
        return self.nc.max_payload

    def alive(self):
        return self.nc.is_connected and self.refused is None

    async def connect(self, server, timeout, **options):
        """
        Connect to C{server} (a URL without credentials; C{options} for
        nats-py's C{connect}: C{user}, C{password}, C{token}, C{tls},
        C{name}) and subscribe to the link's replies.
        """
        try:
            await self.nc.connect(
                servers=[server], allow_reconnect=False, max_reconnect_attempts=1,
                reconnect_time_wait=0, connect_timeout=timeout, ping_interval=max(timeout, 5),
                error_cb=self._error, disconnected_cb=self._ended, closed_cb=self._ended,
                **options)
            self.js = self.nc.jetstream(timeout=timeout)
            self._prefix = self.nc.new_inbox() + "."
            await self.nc.subscribe(self._prefix + "*", cb=self._reply)
        except BaseException:
            # In the background: nats-py's close of a connection whose TLS
            # handshake failed waits for ever (L{close} gives up after
            # CLOSE_TIMEOUT); the caller hears why it failed at once.
            asyncio.ensure_future(self.close())
            raise

    def why(self):
        """
        @return: what was last wrong with the connection, one line (or
            C{None}).
        """
        return one_line(self._last_error) if self._last_error is not None else None

    async def ensure_stream(self, config):
        """
        Make the stream of C{config} (a nats-py C{StreamConfig}) unless one
        of its name exists (whatever its settings).

        @return: whether it was made.
        @raise Refused: the server refused the request (permissions).
        """
        try:
            await self._api(self.js.stream_info(config.name))
            return False
        except NotFoundError:
            pass
        try:
            await self._api(self.js.add_stream(config))
        except BadRequestError as e:
            if e.err_code != STREAM_NAME_IN_USE:
                raise
            return False
        return True

    async def _api(self, request):
        """
        Await a JetStream API C{request}; a permissions violation for the
        API's subjects ends it at once (nats-py would wait for its timeout).
        """
        refused = self._api_refused = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(request)
        try:
            await asyncio.wait([task, refused], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
        if not task.done():
            raise refused.result()
        return task.result()

    async def publish(self, items, settle):
        """
        Publish C{items} in order and wait for their answers.

        @param items: C{(key, subject, payload bytes, headers or None)}s.
        @param settle: called as C{settle(key, result)} once per item, as
            its answer comes: an L{Ack}, or the exception saying why it was
            not stored (L{Lost}, L{Refused}, L{NoStream}, L{TooLarge},
            L{JetStreamError}).  If this is cancelled (the batch's
            deadline), the items not answered yet are never settled.
        """
        batch = _Batch(settle)
        tokens = []
        try:
            for key, subject, payload, headers in items:
                if not self.nc.is_connected or self.refused is not None:
                    settle(key, self.refused or Lost(self.why() or "not connected"))
                    continue
                token = str(next(self._tokens))
                self._waiting[token] = (batch, key, subject)
                batch.waiting += 1
                tokens.append(token)
                try:
                    await self.nc.publish(subject, payload, reply=self._prefix + token,
                                          headers=headers)
                except MaxPayloadError:
                    self._settle(token, TooLarge(f"{len(payload)} bytes, more than the server's "
                                                 f"max_payload ({self.max_payload})"))
                except nats.errors.Error as e:
                    self._settle(token, Lost(one_line(e)))
            batch.all_sent = True
            batch.check()
            await batch.done
        finally:
            for token in tokens:
                self._waiting.pop(token, None)

    def _settle(self, token, result):
        entry = self._waiting.pop(token, None)
        if entry is not None:
            batch, key, _ = entry
            batch.answered(key, result)

    async def _reply(self, msg):
        token = msg.subject[len(self._prefix):]
        entry = self._waiting.get(token)
        if entry is not None:
            self._settle(token, answer(msg, entry[2]))

    def _fail(self, error, subject=None):
        """
        Settle every publish waiting (to C{subject} only, when given) with
        C{error}.
        """
        for token, (_, _, to) in list(self._waiting.items()):
            if subject is None or to.lower() == subject:
                self._settle(token, error)

    async def _error(self, error):
        text = str(error).removeprefix("nats: ")
        lowered = text.lower()
        if "permissions violation" not in lowered:
            self._last_error = error
            return
        refused = self.refusal = Refused(text)
        publish = 'for publish to "'
        if publish in lowered:
            subject = lowered.split(publish, 1)[1].rstrip('"')
            if subject.startswith("$js.api.") and self._api_refused is not None \
                    and not self._api_refused.done():
                self._api_refused.set_result(refused)
            self._fail(refused, subject)
        else:  # the reply subscription: no publish can be acknowledged
            self.refused = refused
            self._fail(refused)

    async def _ended(self):
        self._fail(Lost(self.why() or "the connection was closed"))

    async def close(self):
        """
        Close the connection (at most L{CLOSE_TIMEOUT} seconds) and fail
        whatever still waits.
        """
        try:
            await asyncio.wait_for(self.nc.close(), CLOSE_TIMEOUT)
        except Exception:  # closing after a failed connect, a timeout: gone anyway
            pass
        self._fail(Lost(self.why() or "the connection was closed"))
