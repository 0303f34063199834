# -*- test-case-name: tests.test_status -*-
"""
L{StatusService}: an HTTP endpoint for health checks and Prometheus.

  - C{/health}: 200 while the service runs;
  - C{/ready}: 200 only while the server is the primary and the listener is
    listening, else 503; a small JSON body says why;
  - C{/metrics}: Prometheus text format, read from the Client at scrape time.

It works under twistd (C{--status-port}) and in a C{.tac} alike: give it a
Client and a parent service.  Nothing here prints the DSN.
"""

import json
import socket

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.application import service
from twisted.web import resource, server

from hermes_tx.status.metrics import ClientCollector
from hermes_tx.status.readiness import readiness


class _JsonResource(resource.Resource):
    isLeaf = True

    def __init__(self, answer):
        resource.Resource.__init__(self)
        self.answer = answer

    def render_GET(self, request):
        code, body = self.answer()
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode("utf-8") + b"\n"


class _MetricsResource(resource.Resource):
    # prometheus_client's own Twisted resource renders in the reactor's
    # thread pool; the Client's counters are only safe to read in the
    # reactor thread, so render here (it takes microseconds).
    isLeaf = True

    def __init__(self, registry):
        resource.Resource.__init__(self)
        self.registry = registry

    def render_GET(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


class _QuietSite(server.Site):
    # A probe every few seconds is not news: no access log line per request.
    def log(self, request):
        pass


def make_registry(client):
    """
    @return: a C{prometheus_client.CollectorRegistry} with C{client}'s
        figures (L{ClientCollector}, the sinks' included).  Register your
        application's own collectors in it: C{/metrics} serves them too.
    """
    registry = CollectorRegistry()
    registry.register(ClientCollector(client))
    return registry


def make_resource(client, registry=None):
    """
    The status endpoint as a resource to mount in a site of your own
    (C{root.putChild(b"status", make_resource(client))} serves
    C{/status/health}, C{/status/ready} and C{/status/metrics}).

    @param registry: the registry C{/metrics} serves; C{None}: a new one
        (L{make_registry}).
    @return: a L{twisted.web.resource.Resource} with the children
        C{health}, C{ready} and C{metrics}.
    """
    if registry is None:
        registry = make_registry(client)

    def health():
        running = bool(client.running)
        return (200 if running else 503), {"status": "ok" if running else "stopped"}

    def ready():
        ok, details = readiness(client)
        return (200 if ok else 503), dict(details, ready=ok)

    root = resource.Resource()
    root.putChild(b"health", _JsonResource(health))
    root.putChild(b"ready", _JsonResource(ready))
    root.putChild(b"metrics", _MetricsResource(registry))
    return root


def make_site(client, access_log=False, registry=None):
    """
    @param access_log: True to log a line per request (Twisted's access
        log); by default nothing is logged per request.
    @param registry: the registry C{/metrics} serves (see
        L{make_resource}).
    @return: a L{twisted.web.server.Site} serving /health, /ready and
        /metrics for C{client}.
    """
    site = (server.Site if access_log else _QuietSite)(make_resource(client, registry))
    site.noisy = False
    return site


def check_listen(port, interface="127.0.0.1"):
    """
    Bind (and let go of) the address the status port is to listen on, so
    that a port already taken is found before anything starts.

    @param port: the TCP port number.
    @param interface: an IPv4 or IPv6 address.
    @raise OSError: it cannot be bound (C{EADDRINUSE}, C{EADDRNOTAVAIL},
        C{EACCES} ...).
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted does
        sock.bind((interface, port))


class StatusService(service.Service):
    """
    Serves L{make_site} on a TCP port while running.

    @ivar port: the listening port (C{getHost().port} tells the number when
        0 was asked for), or C{None} while stopped.
    @ivar registry: the registry C{/metrics} serves: register the
        application's own collectors in it.
    """

    def __init__(self, client, port, interface="127.0.0.1", reactor=None, access_log=False,
                 registry=None):
        """
        @param client: the L{hermes_tx.client.Client} to report on.
        @param port: the TCP port number (0 picks a free one).
        @param interface: the address to listen on (default loopback only).
        @param reactor: an C{IReactorTCP}; C{None} means the reactor.
        @param access_log: True to log a line per request.
        @param registry: the registry C{/metrics} serves; C{None}: a new
            one (L{make_registry}), in L{registry}.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.client = client
        self.port_number = port
        self.interface = interface
        self.reactor = reactor
        self.access_log = access_log
        self.registry = registry if registry is not None else make_registry(client)
        self.port = None

    def startService(self):
        service.Service.startService(self)
        self.port = self.reactor.listenTCP(
            self.port_number, make_site(self.client, self.access_log, self.registry),
            interface=self.interface,
        )

    def stopService(self):
        service.Service.stopService(self)
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None
