"""
Tests for L{hermes_tx.postgres.hosts}: splitting a DSN into one entry per host and
joining entries back (checked against libpq's own parser), the C{PG*}
environment defaults, DSNs left whole, and resolving names with a fake
resolver and with the real reactor's.
"""

import os

import psycopg2.extensions
from twisted.internet import defer, reactor
from twisted.trial import unittest

from hermes_tx.postgres.hosts import (
    HostEntry,
    is_multi_host,
    join_hosts,
    reactor_resolver,
    resolve_entries,
    split_hosts,
)

E = HostEntry


class _CleanEnvironment:
    """
    Each test runs with no C{PG*} variables but the ones it sets.
    """

    def setUp(self):
        super().setUp()
        self.set_env()

    def set_env(self, **variables):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(variables)
        self.patch(os, "environ", env)


def libpq(params):
    """
    @return: C{params} after a trip through libpq's conninfo parser, so a
        join is checked to be a DSN libpq reads the same way.
    """
    return psycopg2.extensions.parse_dsn(psycopg2.extensions.make_dsn(**params))


class SplitTests(_CleanEnvironment, unittest.TestCase):
    def test_single_host(self):
        self.assertEqual(split_hosts({"host": "db", "port": "5432"}), [E("db", "", "5432")])
        self.assertEqual(split_hosts({"host": "db"}), [E("db", "", "")])

    def test_multi_host(self):
        self.assertEqual(
            split_hosts({"host": "a,b,c", "port": "1,2,3", "dbname": "x"}),
            [E("a", "", "1"), E("b", "", "2"), E("c", "", "3")],
        )

    def test_one_port_for_all_hosts(self):
        self.assertEqual(
            split_hosts({"host": "a,b,c", "port": "5433"}),
            [E("a", "", "5433"), E("b", "", "5433"), E("c", "", "5433")],
        )

    def test_no_port(self):
        self.assertEqual(split_hosts({"host": "a,b"}), [E("a", "", ""), E("b", "", "")])

    def test_hostaddr_list(self):
        self.assertEqual(
            split_hosts({"hostaddr": "10.0.0.1,10.0.0.2", "port": "1,2"}),
            [E("", "10.0.0.1", "1"), E("", "10.0.0.2", "2")],
        )
        self.assertEqual(
            split_hosts({"host": "a,b", "hostaddr": "10.0.0.1,::1", "port": "7"}),
            [E("a", "10.0.0.1", "7"), E("b", "::1", "7")],
        )

    def test_unix_sockets(self):
        self.assertEqual(
            split_hosts({"host": "/tmp,/var/run/postgresql", "port": "5432,5433"}),
            [E("/tmp", "", "5432"), E("/var/run/postgresql", "", "5433")],
        )

    def test_empty_host(self):
        """
        No host at all is libpq's default socket; an empty item in a list
        is the default for that position.
        """
        self.assertEqual(split_hosts({}), [E("", "", "")])
        self.assertEqual(split_hosts({"dbname": "x"}), [E("", "", "")])
        self.assertEqual(
            split_hosts({"host": "a,,b", "port": "1,2,3"}),
            [E("a", "", "1"), E("", "", "2"), E("b", "", "3")],
        )
        self.assertEqual(split_hosts({"host": "", "port": "1"}), [E("", "", "1")])

    def test_from_a_uri(self):
        params = psycopg2.extensions.parse_dsn("postgresql://u@h1:5433,h2:5434/db")
        self.assertEqual(split_hosts(params), [E("h1", "", "5433"), E("h2", "", "5434")])

    def test_environment_defaults(self):
        self.set_env(PGHOST="e1,e2", PGPORT="5,6")
        self.assertEqual(split_hosts({"dbname": "x"}), [E("e1", "", "5"), E("e2", "", "6")])
        self.assertTrue(is_multi_host({}))

    def test_environment_applies_only_where_the_dsn_is_silent(self):
        self.set_env(PGHOST="envhost", PGPORT="9999", PGHOSTADDR="10.9.9.9")
        self.assertEqual(split_hosts({"host": "a,b", "hostaddr": "10.0.0.1,10.0.0.2", "port": "1"}),
                         [E("a", "10.0.0.1", "1"), E("b", "10.0.0.2", "1")])
        self.assertEqual(split_hosts({"host": "a", "hostaddr": "10.0.0.1"}),
                         [E("a", "10.0.0.1", "9999")])
        self.assertEqual(split_hosts({}), [E("envhost", "10.9.9.9", "9999")])

    def test_pgport_for_every_host(self):
        self.set_env(PGPORT="6543")
        self.assertEqual(split_hosts({"host": "a,b"}), [E("a", "", "6543"), E("b", "", "6543")])

    def test_service_left_whole(self):
        """
        A service file may name hosts hermes_tx cannot see: one entry,
        left to libpq.
        """
        self.assertEqual(
            split_hosts({"service": "mydb", "host": "a,b", "port": "1,2"}), [E("a,b", "", "1,2")]
        )
        self.assertEqual(split_hosts({"service": "mydb"}), [E("", "", "")])
        self.assertFalse(is_multi_host({"service": "mydb", "host": "a,b"}))

    def test_pgservice_left_whole(self):
        self.set_env(PGSERVICE="mydb")
        self.assertEqual(split_hosts({"host": "a,b", "port": "1,2"}), [E("a,b", "", "1,2")])

    def test_mismatched_lists_left_whole(self):
        """
        Lists libpq refuses ("could not match 3 port numbers to 2 hosts",
        "could not match 1 host names to 2 hostaddr values") are left whole
        for libpq to say so.
        """
        for params in [
            {"host": "a,b", "port": "1,2,3"},
            {"host": "a,b,c", "port": "1,2"},
            {"host": "a,b", "hostaddr": "10.0.0.1,10.0.0.2,10.0.0.3"},
            {"host": "a", "hostaddr": "10.0.0.1,10.0.0.2"},
            {"host": "a,b", "hostaddr": "10.0.0.1"},
        ]:
            whole = E(params.get("host", ""), params.get("hostaddr", ""), params.get("port", ""))
            self.assertEqual(split_hosts(params), [whole], params)
            self.assertFalse(is_multi_host(params), params)

    def test_mismatch_with_the_environment_left_whole(self):
        self.set_env(PGPORT="1,2,3")
        self.assertEqual(split_hosts({"host": "a,b"}), [E("a,b", "", "")])

    def test_is_multi_host(self):
        self.assertFalse(is_multi_host({}))
        self.assertFalse(is_multi_host({"host": "a", "port": "1"}))
        self.assertTrue(is_multi_host({"host": "a,b"}))
        self.assertTrue(is_multi_host({"hostaddr": "10.0.0.1,10.0.0.2"}))
        self.assertTrue(is_multi_host({"host": "a,", "port": "1"}))


class JoinTests(_CleanEnvironment, unittest.TestCase):
    CASES = [
        {"host": "db", "port": "5432", "dbname": "x", "password": "s3cret"},
        {"host": "a,b,c", "port": "1,2,3", "user": "u"},
        {"host": "a,b,c", "port": "5433"},
        {"hostaddr": "10.0.0.1,10.0.0.2", "port": "1,2"},
        {"host": "a,b", "hostaddr": "10.0.0.1,::1", "port": "7,8"},
        {"host": "/tmp,/var/run/postgresql", "port": "5432,5433"},
        {"host": "/tmp/with space,b", "port": "1,2"},
        {"host": "a,,b", "port": "1,2,3"},
        {"dbname": "x"},
        {},
    ]

    def test_round_trips(self):
        """
        Joining the entries a DSN splits into gives a DSN that libpq reads
        as the same hosts, with every other keyword kept.
        """
        for params in self.CASES:
            entries = split_hosts(params)
            joined = join_hosts(params, entries)
            self.assertEqual(split_hosts(joined), entries, params)
            self.assertEqual(split_hosts(libpq(joined)), entries, params)
            others = {k: v for k, v in params.items() if k not in ("host", "hostaddr", "port")}
            self.assertEqual({k: v for k, v in joined.items() if k in others}, others)

    def test_single_host_joins_exactly(self):
        params = {"host": "db", "port": "5432", "dbname": "x"}
        self.assertEqual(join_hosts(params, split_hosts(params)), params)

    def test_one_host_out_of_several(self):
        params = {"host": "a,b,c", "port": "1,2,3", "target_session_attrs": "read-write"}
        entries = split_hosts(params)
        self.assertEqual(
            join_hosts(params, [entries[1]]),
            {"host": "b", "port": "2", "target_session_attrs": "read-write"},
        )
        self.assertEqual(
            join_hosts(params, [entries[2], entries[0]]),
            {"host": "c,a", "port": "3,1", "target_session_attrs": "read-write"},
        )

    def test_empty_fields_are_dropped(self):
        """
        A keyword no entry sets is removed, so the environment or libpq's
        default applies, as in the original DSN.
        """
        params = {"host": "a", "hostaddr": "10.0.0.1", "port": "1", "dbname": "x"}
        self.assertEqual(join_hosts(params, [E("b", "", "")]), {"host": "b", "dbname": "x"})
        self.assertEqual(join_hosts(params, [E("", "10.0.0.2", "")]), {"hostaddr": "10.0.0.2", "dbname": "x"})

    def test_resolved_entry(self):
        params = {"host": "db.example", "port": "5432"}
        joined = join_hosts(params, [E("db.example", "10.1.2.3", "5432")])
        self.assertEqual(joined, {"host": "db.example", "hostaddr": "10.1.2.3", "port": "5432"})
        self.assertEqual(libpq(joined), joined)

    def test_params_not_changed(self):
        params = {"host": "a,b", "port": "1,2"}
        join_hosts(params, [E("a", "", "1")])
        self.assertEqual(params, {"host": "a,b", "port": "1,2"})


class HostEntryTests(unittest.TestCase):
    def test_label(self):
        self.assertEqual(E("db", "", "5432").label, "db:5432")
        self.assertEqual(E("db", "10.0.0.1", "5432").label, "db:5432")
        self.assertEqual(E("", "10.0.0.1", "5").label, "10.0.0.1:5")
        self.assertEqual(E("/tmp", "", "5432").label, "/tmp:5432")
        self.assertEqual(E("db", "", "").label, "db")
        self.assertEqual(E("", "", "").label, "default")
        self.assertEqual(E("", "", "5433").label, "default:5433")

    def test_needs_resolving(self):
        for entry, expected in [
            (E("db.example", "", "5432"), True),
            (E("localhost", "", ""), True),
            (E("db.example", "10.0.0.1", ""), False),
            (E("127.0.0.1", "", ""), False),
            (E("::1", "", ""), False),
            (E("fe80::1", "", ""), False),
            (E("/var/run/postgresql", "", ""), False),
            (E("@abstract", "", ""), False),
            (E("", "", ""), False),
            (E("", "10.0.0.1", ""), False),
        ]:
            self.assertEqual(entry.needs_resolving, expected, entry)


class FakeResolver:
    """
    Answers from a table: a list of addresses, an exception to fail with,
    or C{None} for a Deferred the test fires (in C{pending}).
    """

    def __init__(self, table):
        self.table = table
        self.asked = []
        self.pending = {}

    def __call__(self, name):
        self.asked.append(name)
        answer = self.table[name]
        if answer is None:
            d = self.pending[name] = defer.Deferred()
            return d
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(list(answer))


class ResolveEntriesTests(unittest.TestCase):
    def resolved(self, entries, resolver):
        d = resolve_entries(entries, resolver)
        return self.successResultOf(d)

    def test_several_addresses_expand_in_order(self):
        resolver = FakeResolver({"a.example": ["10.0.0.1", "10.0.0.2"], "b.example": ["10.0.0.3"]})
        entries = [E("a.example", "", "1"), E("192.0.2.7", "", "2"), E("b.example", "", "3"),
                   E("/tmp", "", "4")]
        result, unresolved = self.resolved(entries, resolver)
        self.assertEqual(result, [
            E("a.example", "10.0.0.1", "1"),
            E("a.example", "10.0.0.2", "1"),
            E("192.0.2.7", "", "2"),
            E("b.example", "10.0.0.3", "3"),
            E("/tmp", "", "4"),
        ])
        self.assertEqual(unresolved, [])
        self.assertEqual(sorted(resolver.asked), ["a.example", "b.example"])

    def test_each_name_looked_up_once(self):
        resolver = FakeResolver({"db": ["10.0.0.1"]})
        result, _ = self.resolved([E("db", "", "1"), E("db", "", "2")], resolver)
        self.assertEqual(result, [E("db", "10.0.0.1", "1"), E("db", "10.0.0.1", "2")])
        self.assertEqual(resolver.asked, ["db"])

    def test_nothing_to_resolve(self):
        resolver = FakeResolver({})
        entries = [E("10.0.0.1", "", "1"), E("x", "10.0.0.2", "2"), E("", "", "")]
        self.assertEqual(self.resolved(entries, resolver), (entries, []))
        self.assertEqual(resolver.asked, [])
        self.assertEqual(self.resolved([], resolver), ([], []))

    def test_unresolved_names_reported_once_in_order(self):
        resolver = FakeResolver({"gone": [], "ok": ["10.0.0.1"], "also-gone": []})
        entries = [E("gone", "", "1"), E("ok", "", "2"), E("also-gone", "", "3"), E("gone", "", "4")]
        result, unresolved = self.resolved(entries, resolver)
        self.assertEqual(result, [E("ok", "10.0.0.1", "2")])
        self.assertEqual(unresolved, ["gone", "also-gone"])

    def test_resolver_that_fails(self):
        resolver = FakeResolver({"bad": RuntimeError("resolver broke"), "ok": ["10.0.0.1"]})
        result, unresolved = self.resolved([E("bad", "", "1"), E("ok", "", "2")], resolver)
        self.assertEqual(result, [E("ok", "10.0.0.1", "2")])
        self.assertEqual(unresolved, ["bad"])

    def test_resolver_that_raises(self):
        """
        A resolver raising instead of returning a failed Deferred is a
        failed lookup too, not a failed resolution of every name.
        """

        def resolve(name):
            if name == "bad":
                raise ValueError("cannot even start")
            return defer.succeed(["10.0.0.1"])

        result, unresolved = self.resolved([E("bad", "", "1"), E("ok", "", "2")], resolve)
        self.assertEqual(result, [E("ok", "10.0.0.1", "2")])
        self.assertEqual(unresolved, ["bad"])

    def test_lookups_run_at_once_and_keep_the_dsn_order(self):
        """
        Every name is asked for before any answer; answers arriving in
        another order still give the DSN's order.
        """
        resolver = FakeResolver({"a": None, "b": None, "c": None})
        d = resolve_entries([E("a", "", "1"), E("b", "", "2"), E("c", "", "3")], resolver)
        self.assertEqual(sorted(resolver.asked), ["a", "b", "c"])
        self.assertNoResult(d)
        resolver.pending["c"].callback(["10.0.0.3"])
        resolver.pending["b"].errback(RuntimeError("no"))
        self.assertNoResult(d)
        resolver.pending["a"].callback(["10.0.0.1", "10.0.0.11"])
        result, unresolved = self.successResultOf(d)
        self.assertEqual(result, [E("a", "10.0.0.1", "1"), E("a", "10.0.0.11", "1"),
                                  E("c", "10.0.0.3", "3")])
        self.assertEqual(unresolved, ["b"])


class ReactorResolverTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_localhost(self):
        resolve = reactor_resolver(reactor)
        addresses = yield resolve("localhost").addTimeout(10, reactor)
        self.assertTrue(set(addresses) & {"127.0.0.1", "::1"}, addresses)
        self.assertEqual(len(addresses), len(set(addresses)))
        result, unresolved = yield resolve_entries([E("localhost", "", "5432")], resolve)
        self.assertEqual(unresolved, [])
        self.assertEqual([e.hostaddr for e in result], addresses)
        self.assertEqual({(e.host, e.port) for e in result}, {("localhost", "5432")})

    @defer.inlineCallbacks
    def test_names_getaddrinfo_cannot_encode(self):
        """
        A hostile host name (a label over 63 characters, an empty label)
        makes C{getaddrinfo} raise before any lookup; the lookup then finds
        nothing, rather than never answering.
        """
        resolve = reactor_resolver(reactor)
        for name in ["x" * 300, "a..b", "\ud800"]:
            addresses = yield resolve(name).addTimeout(5, reactor)
            self.assertEqual(addresses, [], name)
        result, unresolved = yield resolve_entries([E("x" * 300, "", "1")], resolve).addTimeout(5, reactor)
        self.assertEqual((result, unresolved), ([], ["x" * 300]))
