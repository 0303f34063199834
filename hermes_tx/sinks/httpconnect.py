# -*- test-case-name: tests.test_sink_hostnames -*-
"""
Where the HTTP sinks connect: the request URI as ASCII bytes, and an
C{Agent} endpoint factory that takes host names IDNA 2008 refuses.

Twisted's C{HostnameEndpoint} (and treq, through hyperlink) encode a host
name with IDNA 2008, which refuses C{_}: a Docker Compose service name such
as C{hook_service} failed every request.  The system resolver takes such a
name, so here a plain ASCII name that IDNA refuses is resolved with the
reactor's name resolver (C{getaddrinfo} in a thread, as for any other
name) and its addresses are tried in order; every other name goes through
C{HostnameEndpoint} as usual.  HTTPS to such a name is refused when the
sink is made: a certificate cannot be checked against it.
"""

import re
from urllib.parse import quote, urlsplit

import idna
from twisted.internet import defer, error
from twisted.internet.abstract import isIPv6Address
from twisted.internet.address import IPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS)
from twisted.internet.interfaces import IResolutionReceiver, IStreamClientEndpoint
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

#: one label of a plain ASCII host name (C{_} included)
_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}\Z")
#: what a path or a query keeps as it is (already-escaped C{%XX} included)
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


def idna_refuses(host):
    """
    @return: whether C{host} (ASCII text) is a name that IDNA 2008 refuses
        but the system resolver takes (C{hook_service}).
    """
    if isIPv6Address(host):
        return False
    try:
        idna.encode(host)
    except idna.IDNAError:
        return True
    return False


def ascii_host(host):
    """
    @param host: a host name or IP address from a URL (IPv6 without its
        brackets), text.
    @return: the host as it goes on the wire (ASCII text): an ASCII name as
        it is, an internationalized one in its C{xn--} form.
    @raise ValueError: it is not a host name (the message says why).
    """
    if isIPv6Address(host):
        return host
    if host.isascii():
        labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
        if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
            raise ValueError(f"{host!r} is not a host name")
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as e:
        raise ValueError(f"{host!r} is not a host name ({e})") from None


def request_uri(url):
    """
    @param url: an C{http(s)://} URL without user information (text).
    @return: C{(uri, host)}: the URL as ASCII bytes for C{Agent.request}
        (the host as L{ascii_host} says, the path and query percent-encoded
        where they are not ASCII), and that host (text).
    @raise ValueError: the host is not a host name.
    """
    parts = urlsplit(url)
    host = ascii_host(parts.hostname or "")
    netloc = f"[{host}]" if isIPv6Address(host) else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    query = quote(parts.query, safe=_QUERY_SAFE)
    uri = f"{parts.scheme.lower()}://{netloc}{path}" + (f"?{query}" if query else "")
    return uri.encode("ascii"), host


def resolve(reactor, host, port):
    """
    Resolve C{host} with C{reactor.nameResolver} (without IDNA checks).

    @return: a Deferred firing with a list of C{IPv4Address}/C{IPv6Address}
        (empty when the name does not resolve).
    """
    addresses = []
    done = defer.Deferred()

    @implementer(IResolutionReceiver)
    class Receiver:
        def resolutionBegan(self, resolution):
            pass

        def addressResolved(self, address):
            addresses.append(address)

        def resolutionComplete(self):
            done.callback(addresses)

    reactor.nameResolver.resolveHostName(Receiver(), host, portNumber=port)
    return done


@implementer(IStreamClientEndpoint)
class ResolvedEndpoint:
    """
    Connect to a name IDNA refuses: resolve it (L{resolve}), then try its
    addresses in order until one connects.
    """

    def __init__(self, reactor, host, port, timeout):
        self._reactor = reactor
        self._host = host
        self._port = port
        self._timeout = timeout

    def __repr__(self):
        return f"<ResolvedEndpoint {self._host}:{self._port}>"

    @defer.inlineCallbacks
    def connect(self, factory):
        addresses = yield resolve(self._reactor, self._host, self._port)
        if not addresses:
            raise error.DNSLookupError(f"no address for {self._host!r}")
        failure = None
        for address in addresses:
            kind = TCP6ClientEndpoint if isinstance(address, IPv6Address) else TCP4ClientEndpoint
            endpoint = kind(self._reactor, address.host, self._port, timeout=self._timeout)
            try:
                return (yield endpoint.connect(factory))
            except error.ConnectError as e:
                failure = e
        raise failure


@implementer(IAgentEndpointFactory)
class EndpointFactory:
    """
    The endpoints of an HTTP sink's C{Agent}: Twisted's standard ones
    (C{HostnameEndpoint}, TLS checked as a browser does), and a
    L{ResolvedEndpoint} for plain HTTP to a name IDNA refuses.
    """

    def __init__(self, reactor, connect_timeout):
        self._reactor = reactor
        self._timeout = connect_timeout
        self._tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri):
        host = uri.host.decode("ascii")
        if idna_refuses(host):
            if uri.scheme != b"http":
                raise error.ConnectError(string=f"TLS to a host name IDNA refuses: {host!r}")
            return ResolvedEndpoint(self._reactor, host, uri.port, self._timeout)
        endpoint = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            return wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint
