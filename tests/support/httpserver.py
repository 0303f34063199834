"""
A real twisted.web server in-process that scripts failures for the HTTP
sinks: each request gets the next behaviour of a script (a callable), and
everything it accepted is recorded; and L{NamedReactor}, the reactor with
host names of a test's own (a Docker Compose service name such as
C{hook_service}, which no resolver here knows).
"""

import json
import socket

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IHostnameResolver, IHostResolution, IReactorPluggableNameResolver)
from twisted.web import resource, server
from zope.interface import implementer

#: behaviours a script may return for one request
OK = "ok"
DROP = "drop"  # abort the connection without an answer
DROP_AFTER = "drop-after"  # accept the body, then abort without an answer
SLOW = "slow"  # never answer (the client's timeout must fire)


class ScriptedResource(resource.Resource):
    """
    Answers POSTs as C{script(request_number, body)} says: L{OK}, L{DROP},
    L{DROP_AFTER}, L{SLOW}, or C{(status, headers, body)}; statuses below
    300 accept the body, others do not.

    @ivar accepted: bodies accepted, decoded, in order.
    @ivar requests: every request as C{(headers dict, body bytes)}.
    """

    isLeaf = True

    def __init__(self, script=None):
        resource.Resource.__init__(self)
        self.script = script or (lambda n, body: OK)
        self.accepted = []
        self.requests = []
        self.hanging = []
        self.last_connection = None
        self.last_uri = None

    def render_POST(self, request):
        body = request.content.read()
        headers = {k.decode().lower(): v[0].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((headers, body))
        self.last_connection = request.channel
        self.last_uri = request.uri
        action = self.script(len(self.requests) - 1, body)
        if action in (OK, DROP_AFTER):
            self.accept(body)
        if action in (DROP, DROP_AFTER):
            request.channel.transport.abortConnection()
            return server.NOT_DONE_YET
        if action == SLOW:
            self.hanging.append(request)
            return server.NOT_DONE_YET
        if action == OK:
            request.setResponseCode(200)
            return b'{"ok":true}'
        status, answer_headers, answer = action
        if status < 300:
            self.accept(body)
        request.setResponseCode(status)
        for k, v in answer_headers.items():
            request.setHeader(k, v)
        return answer

    def accept(self, body):
        self.accepted.append(json.loads(body))

    def events(self):
        """@return: every accepted event, in order."""
        return [e for batch in self.accepted for e in batch]


class _Site(server.Site):
    noisy = False

    def __init__(self, res):
        server.Site.__init__(self, res)
        self.live = set()

    def log(self, request):
        pass  # no access log lines

    def buildProtocol(self, addr):
        protocol = server.Site.buildProtocol(self, addr)
        made, lost = protocol.makeConnection, protocol.connectionLost
        transports = []

        def makeConnection(transport):
            transports.append(transport)
            self.live.add(transport)
            return made(transport)

        def connectionLost(reason):
            self.live.difference_update(transports)
            return lost(reason)

        protocol.makeConnection, protocol.connectionLost = makeConnection, connectionLost
        return protocol


class Server:
    """
    A twisted.web server on 127.0.0.1 that a test can restart.

    @ivar url: its base URL, e.g. C{http://127.0.0.1:PORT/}.
    """

    def __init__(self, res):
        self.resource = res
        self.site = _Site(res)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.number = self.port.getHost().port
        self.url = f"http://127.0.0.1:{self.number}/"
        self.restarts = 0

    @defer.inlineCallbacks
    def restart(self, down_for=0.1):
        """
        Stop listening, reset every connection, and listen again on the
        same port C{down_for} seconds later (requests meanwhile are
        refused).
        """
        yield self.stop()
        yield task.deferLater(reactor, down_for, lambda: None)
        self.port = reactor.listenTCP(self.number, self.site, interface="127.0.0.1")
        self.restarts += 1

    def stop(self):
        for transport in list(self.site.live):
            transport.abortConnection()
        return defer.maybeDeferred(self.port.stopListening)


def serve(case, res):
    """
    Serve C{res} until the test C{case} ends.

    @return: the L{Server}.
    """
    srv = Server(res)
    case.addCleanup(lambda: srv.stop() if srv.port.connected else None)
    return srv


def listen(case, res):
    """
    Serve C{res} on 127.0.0.1 on a free port until the test C{case} ends.

    @return: the base URL, e.g. C{http://127.0.0.1:PORT/}.
    """
    return serve(case, res).url


def free_port():
    """
    @return: a TCP port on 127.0.0.1 that nothing listens on (now).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name):
        self.name = name

    def cancel(self):
        pass


@implementer(IHostnameResolver)
class _NamesResolver:
    def __init__(self, names, fallback):
        self.names = names
        self.fallback = fallback
        self.asked = []

    def resolveHostName(self, resolutionReceiver, hostName, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        self.asked.append(hostName)
        if hostName not in self.names:
            return self.fallback.resolveHostName(resolutionReceiver, hostName, portNumber,
                                                 addressTypes, transportSemantics)
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        resolutionReceiver.addressResolved(IPv4Address("TCP", self.names[hostName], portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


@implementer(IReactorPluggableNameResolver)
class NamedReactor:
    """
    The global reactor, whose name resolver knows C{names} (a dict of host
    name to IPv4 address) before asking the system's, as Docker's DNS
    knows a Compose project's service names.  Pass it to a sink as
    C{reactor}.

    @ivar nameResolver: the resolver; its C{asked} lists the names asked.
    """

    def __init__(self, names):
        self.nameResolver = _NamesResolver(names, reactor.nameResolver)

    def installNameResolver(self, resolver):
        previous, self.nameResolver = self.nameResolver, resolver
        return previous

    def __getattr__(self, name):
        return getattr(reactor, name)
