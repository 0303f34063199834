# -*- test-case-name: tests.test_hosts -*-
"""
The hosts of a DSN, one at a time, with names resolved off the reactor.

libpq takes C{host=a,b port=1,2} (or a multi-host URI) and tries the hosts
in order inside C{PQconnectPoll}.  hermes_tx splits such a DSN into one
L{HostEntry} per host so that role checks can ask every host in parallel
and components can connect to the one that is the primary.

libpq also resolves host names inside C{PQconnectPoll}, with a blocking
C{getaddrinfo}: on the reactor thread a slow resolver would freeze
everything.  L{resolve_entries} resolves them with the reactor's
(threaded) resolver first and hands libpq C{hostaddr}, keeping C{host} for
TLS verification and the password file.
"""

import ipaddress
import os
from collections import namedtuple

from twisted.internet import defer
from twisted.internet.interfaces import IResolutionReceiver
from zope.interface import implementer


class HostEntry(namedtuple("HostEntry", "host hostaddr port")):
    """
    One host of a DSN: C{host} (a name, an address, a socket directory or
    C{""}), C{hostaddr} (an address or C{""}) and C{port} (text or C{""}).
    """

    @property
    def label(self):
        """
        How logs name the host: C{host:port} (never a secret).
        """
        where = self.host or self.hostaddr or "default"
        return f"{where}:{self.port}" if self.port else where

    @property
    def needs_resolving(self):
        """
        True when libpq would look the name up itself (blocking).
        """
        if self.hostaddr or not self.host or self.host.startswith(("/", "@")):
            return False
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return True
        return False


def _split(value):
    return value.split(",") if value else [""]


def split_hosts(params):
    """
    @param params: the libpq keywords of a DSN (a dict of text).
    @return: a list of L{HostEntry}, one per host, in the DSN's order; the
        C{PGHOST}, C{PGHOSTADDR} and C{PGPORT} defaults apply where the DSN
        leaves them out, as in libpq.  A DSN naming a C{service} gives one
        entry left to libpq.
    """
    if params.get("service") or os.environ.get("PGSERVICE"):
        return [HostEntry(params.get("host", ""), params.get("hostaddr", ""), params.get("port", ""))]
    hosts = _split(params.get("host", os.environ.get("PGHOST", "")))
    addrs = _split(params.get("hostaddr", os.environ.get("PGHOSTADDR", "")))
    ports = _split(params.get("port", os.environ.get("PGPORT", "")))
    count = max(len(hosts), len(addrs))
    # As libpq: one port serves every host, but a host list and a hostaddr
    # list given together must match one to one.
    if hosts == [""]:
        hosts = hosts * count
    if addrs == [""]:
        addrs = addrs * count
    if len(ports) == 1:
        ports = ports * count
    if not len(hosts) == len(addrs) == len(ports):
        # libpq refuses this DSN when connecting and says why; leave it whole.
        return [HostEntry(params.get("host", ""), params.get("hostaddr", ""), params.get("port", ""))]
    return [HostEntry(h, a, p) for h, a, p in zip(hosts, addrs, ports)]


def is_multi_host(params):
    """
    @return: True when the DSN names more than one host.
    """
    return len(split_hosts(params)) > 1


def join_hosts(params, entries):
    """
    @return: a copy of C{params} naming exactly C{entries} (in that order).
    """
    joined = dict(params)
    for keyword, field in (("host", "host"), ("hostaddr", "hostaddr"), ("port", "port")):
        values = [getattr(e, field) for e in entries]
        if any(values):
            joined[keyword] = ",".join(values)
        else:
            joined.pop(keyword, None)
    return joined


@implementer(IResolutionReceiver)
class _Addresses:
    def __init__(self):
        self.found = []
        self.done = defer.Deferred()

    def resolutionBegan(self, resolution):
        pass

    def addressResolved(self, address):
        host = getattr(address, "host", None)
        if host is not None and host not in self.found:
            self.found.append(host)

    def resolutionComplete(self):
        self.done.callback(self.found)


def reactor_resolver(reactor):
    """
    @return: a function taking a host name and returning a Deferred firing
        with its addresses (a list of text, possibly empty), looked up by the
        reactor's C{nameResolver} (in a thread, never blocking the reactor).
    """

    def resolve(name):
        try:
            name.encode("idna")
        except UnicodeError:
            # getaddrinfo would raise this in the resolver's thread, which
            # Twisted's resolver lets escape: the lookup would never end.
            return defer.succeed([])
        receiver = _Addresses()
        reactor.nameResolver.resolveHostName(receiver, name, 0)
        return receiver.done

    return resolve


@defer.inlineCallbacks
def resolve_entries(entries, resolve):
    """
    Give every entry whose host is a name an address.

    @param entries: L{HostEntry}s.
    @param resolve: a function like the one L{reactor_resolver} returns.
    @return: a Deferred firing with C{(entries, unresolved)}: the entries in
        order, a name with several addresses becoming one entry per address
        (libpq tries them in turn, as it does for a name), and the names
        that did not resolve (left out).
    """
    lookups = {}
    for entry in entries:
        if entry.needs_resolving and entry.host not in lookups:
            lookups[entry.host] = defer.maybeDeferred(resolve, entry.host)
    found = {}
    for name, lookup in lookups.items():
        try:
            found[name] = yield lookup
        except Exception:
            found[name] = []
    result, unresolved = [], []
    for entry in entries:
        if not entry.needs_resolving:
            result.append(entry)
        elif found[entry.host]:
            result.extend(entry._replace(hostaddr=a) for a in found[entry.host])
        elif entry.host not in unresolved:
            unresolved.append(entry.host)
    return result, unresolved
