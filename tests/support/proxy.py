"""
A TCP proxy on loopback that a test can break: cut (both sides reset at
once), blackhole (it stops forwarding, the sockets stay open: a half-open
path) and heal.
"""

from twisted.protocols import portforward


class _Server(portforward.ProxyServer):
    def connectionMade(self):
        self.factory.live.add(self)
        portforward.ProxyServer.connectionMade(self)

    def connectionLost(self, reason):
        self.factory.live.discard(self)
        portforward.ProxyServer.connectionLost(self, reason)


class Proxy(portforward.ProxyFactory):
    """
    Forwards 127.0.0.1:<port> to a server, and can break what it forwards.
    """

    protocol = _Server
    noisy = False

    def __init__(self, host, port):
        portforward.ProxyFactory.__init__(self, host, port)
        self.live = set()

    def cut(self):
        """Reset every forwarded connection, both sides."""
        for server in list(self.live):
            if server.peer is not None:
                server.peer.transport.abortConnection()
            server.transport.abortConnection()

    def blackhole(self):
        """Stop forwarding on every connection, keeping the sockets open."""
        for server in list(self.live):
            server.transport.pauseProducing()
            if server.peer is not None:
                server.peer.transport.pauseProducing()

    def heal(self):
        for server in list(self.live):
            server.transport.resumeProducing()
            if server.peer is not None:
                server.peer.transport.resumeProducing()


def listen_proxy(case, host, port):
    """
    Start a L{Proxy} to C{host:port} on a free loopback port, stopped (and
    its connections cut) when the test C{case} ends.

    @return: C{(proxy, proxy_port_number)}.
    """
    from twisted.internet import reactor

    proxy = Proxy(host, port)
    listening = reactor.listenTCP(0, proxy, interface="127.0.0.1")
    case.addCleanup(listening.stopListening)
    case.addCleanup(proxy.cut)
    return proxy, listening.getHost().port
