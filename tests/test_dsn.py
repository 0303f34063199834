"""
Tests for L{hermes_tx.postgres.dsn} and L{hermes_tx.postgres.dsncheck}: adding keywords
through libpq, secrets that never reach a message, options checked before
use.
"""

import os
import re
from urllib.parse import quote, unquote

import psycopg2
import psycopg2.extensions
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from hermes_tx.postgres import dsn as dsnlib
from hermes_tx.postgres.dsncheck import NOWHERE, check_options, probe_dsn
from hermes_tx.exceptions import InvalidConfigurationException, one_line

parse_dsn = psycopg2.extensions.parse_dsn

#: what normalize() adds to a DSN that sets none of it
OURS = dict(dsnlib.DEFAULTS)

# Passwords as people type them: anything, with libpq's separators often.
PASSWORDS = st.text(
    alphabet=st.one_of(
        st.sampled_from("@:/%'\" \\?&=,#[]"),
        st.characters(codec="utf-8", exclude_characters="\x00"),
    ),
    min_size=1,
    max_size=16,
)

# Passwords that split where libpq splits URIs and key=value strings.
SPLIT_PASSWORDS = st.lists(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=6),
    min_size=2, max_size=4,
).flatmap(lambda parts: st.lists(st.sampled_from(["@", "/", ":", "?", " ", "@:", "'"]),
                                 min_size=len(parts) - 1, max_size=len(parts) - 1)
          .map(lambda seps: "".join(p + s for p, s in zip(parts, seps + [""]))))

# Where libpq may cut a password it was not given as meant.
PIECE_SEPARATORS = re.compile(r"[\s'\"\\@:/?&=,\[\]]+")

# The values a libpq message quotes.
QUOTED = re.compile(r'"([^"]*)"')


def shows(text, secret):
    """
    @return: True when C{secret} can be read in C{text}: anywhere when long,
        as a whole token (not inside a word, number or address) when short.
    """
    if len(secret) >= dsnlib.SCRUB_ANYWHERE_FROM:
        return secret in text
    return re.search(rf"(?<![\w.\-]){re.escape(secret)}(?![\w.\-])", text) is not None


def set_environment(case, **variables):
    """
    Set (or, for C{None}, unset) environment variables where libpq sees
    them, until the test C{case} ends.
    """
    for name, value in variables.items():
        saved = os.environ.get(name)
        case.addCleanup(os.environ.__setitem__ if saved is not None else _unset, name, saved)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _unset(name, _):
    os.environ.pop(name, None)


def libpq_error(dsn):
    """
    @return: libpq's message for a connection attempt with C{dsn}.
    """
    try:
        psycopg2.connect(dsn).close()
    except psycopg2.Error as e:
        return str(e)
    raise AssertionError(f"connected with {dsn!r}")


class SecretsTests(unittest.TestCase):
    def test_issue_example(self):
        """
        A URI with an unencoded "@" in the password: libpq takes part of it
        for the host name and names that host in its error.
        """
        dsn = "postgresql://sec:Wr@ngPassXYZ@127.0.0.1:5432/postgres"
        found = dsnlib.secrets(dsn, environ={})
        self.assertEqual(found, {"Wr", "ngPassXYZ", "Wr@ngPassXYZ"})
        message = libpq_error(dsn)
        self.assertIn("ngPassXYZ", message)
        self.assertEqual(dsnlib.scrub(message, found).splitlines()[0],
                         'could not translate host name "***@127.0.0.1" to address: '
                         "Name or service not known")
        self.assertEqual(dsnlib.redact(dsn), "postgresql://sec:***@127.0.0.1:5432/postgres")

    def test_password_as_parsed(self):
        self.assertEqual(dsnlib.secrets("host=x password='a b\\'c'", environ={}), {"a b'c"})
        self.assertEqual(dsnlib.secrets("postgresql://u:p%40w@h/db", environ={}), {"p@w"})
        self.assertEqual(dsnlib.secrets("postgresql://h/db?password=q%20r&sslpassword=s",
                                        environ={}), {"q r", "s"})
        self.assertEqual(dsnlib.secrets({"password": "d", "user": "u"}, environ={}), {"d"})
        self.assertEqual(dsnlib.secrets("", environ={}), set())
        self.assertEqual(dsnlib.secrets("", environ={"PGPASSWORD": "envpw"}), {"envpw"})

    def test_password_as_meant(self):
        """
        Where libpq cannot have parsed the password as meant, the pieces it
        may show are secrets too.
        """
        self.assertEqual(dsnlib.secrets("password=hunter2 broken host=x", environ={}),
                         {"hunter2 broken", "hunter2", "broken"})
        found = dsnlib.secrets("postgresql://u:ab/cd@ef@127.0.0.1:1/db", environ={})
        self.assertTrue({"ab", "cd", "ef", "ab/cd@ef"} <= found)
        message = libpq_error("postgresql://u:ab/cd@ef@127.0.0.1:1/db")
        self.assertIn('"ab"', message)
        self.assertNotIn("ab", dsnlib.scrub(message, found))
        # A query value holding "@" is no sign of a misparsed password.
        self.assertEqual(
            dsnlib.secrets("postgresql://u:pw@host/db?application_name=a@b", environ={}), {"pw"}
        )

    def test_one_line_scrubs(self):
        dsn = "postgresql://sec:Wr@ngPassXYZ@127.0.0.1:5432/postgres"
        try:
            psycopg2.connect(dsn)
        except psycopg2.OperationalError as e:
            error = e
        self.assertEqual(dsnlib.scrub(one_line(error), dsnlib.secrets(dsn)),
                         'OperationalError: could not translate host name "***@127.0.0.1" to '
                         "address: Name or service not known")
        self.assertIn("ngPassXYZ", one_line(error))

    def test_parse_error_shows_scrubbed_detail(self):
        e = self.assertRaises(InvalidConfigurationException, dsnlib.parse,
                              "password=hunter2 broken")
        self.assertEqual(str(e), 'invalid DSN syntax: missing "=" after "***" in connection '
                                 "info string")

    def test_short_secrets_keep_messages_readable(self):
        """
        A short secret is scrubbed only where it stands alone; words,
        numbers and addresses that merely contain it stay.
        """
        message = ('connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
                   "\tIs the server running on that host and accepting TCP/IP connections?")
        self.assertEqual(dsnlib.scrub(message, {"on", "1", "0.0"}), message
                         .replace("port 1", "port ***").replace(" on ", " *** "))
        self.assertEqual(dsnlib.scrub("xx-secret-xx", {"secret"}), "xx-secret-xx")
        self.assertEqual(dsnlib.scrub('"secret@host"', {"secret"}), '"***@host"')
        self.assertEqual(dsnlib.scrub("prefixLongSecret1suffix", {"LongSecret1"}),
                         "prefix***suffix")
        # Longest first: a secret inside another is not left half-shown.
        self.assertEqual(dsnlib.scrub("a Wr@ngPass b", {"Wr", "Wr@ngPass"}), "a *** b")
        self.assertEqual(dsnlib.scrub("nothing", ()), "nothing")

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(PASSWORDS, SPLIT_PASSWORDS))
    @example("Wr@ngPassXYZ")
    @example("ab/cd@ef")
    @example("x@h:5/y")
    @example("it's me")
    @example("pä☃@ss w/ord")
    def test_libpq_messages_never_show_the_password(self, password):
        """
        For any password, written correctly or naively, as key=value or
        URI: once scrubbed, neither libpq's error for a connection attempt
        nor any value libpq parsed from the DSN (all a libpq message may
        quote: host, port, user, database...) shows the password or any
        piece of it libpq may have split off.

        Connections go to 127.0.0.1 port 1 (PGHOSTADDR, PGPORT), so nothing
        is resolved; DSNs that would reach another port are not tried.  A
        piece equal to a value of the correctly quoted DSN (its host, user
        or database) is no leak.  (A real lookup of a misparsed host is in
        L{test_issue_example}.)
        """
        set_environment(self, PGHOSTADDR="127.0.0.1", PGPORT="1", PGPASSWORD=None)
        names = {"host": "hermes-test-host", "user": "hermes-user", "dbname": "hermes-db"}
        quoted = psycopg2.extensions.make_dsn(**names, password=password)
        forms = [
            quoted,
            "host={host} user={user} dbname={dbname} password=".format(**names) + password,
            "postgresql://{user}:{pw}@{host}/{dbname}".format(pw=quote(password, safe=""), **names),
            "postgresql://{user}:{pw}@{host}/{dbname}".format(pw=password, **names),
        ]
        pieces = {password} | set(PIECE_SEPARATORS.split(password))
        pieces |= set(PIECE_SEPARATORS.split(unquote(password, errors="replace")))
        baseline = " ".join(list(names.values()) + QUOTED.findall(libpq_error(quoted)))
        pieces = {p for p in pieces if p and not shows(baseline, p)}
        for dsn in forms:
            try:
                parsed = parse_dsn(dsn)
            except psycopg2.ProgrammingError:
                parsed = {}
            if any(p.isdigit() and p != "1" for p in parsed.get("port", "").split(",")):
                continue
            found = dsnlib.secrets(dsn, environ=os.environ)
            shown = [v for k, v in parsed.items() if k not in dsnlib.SECRET_KEYWORDS]
            shown += QUOTED.findall(libpq_error(dsn))
            for value in shown:
                # (the mask itself, "***", is no leak of a piece "*")
                scrubbed = dsnlib.scrub(f'"{value}"', found).replace(dsnlib.MASK, "\x00")
                for piece in pieces:
                    self.assertFalse(shows(scrubbed, piece), (dsn, piece, value, scrubbed))


class NormalizeTests(unittest.TestCase):
    def test_empty_value_is_kept(self):
        """
        The issue's DSN: ending in an empty value, it keeps it, and our
        keywords are keywords, not the database name.
        """
        dsn = "host=127.0.0.1 user=postgres dbname="
        result = parse_dsn(dsnlib.normalize(dsn, application_name="hermes-x"))
        self.assertEqual(result, dict(parse_dsn(dsn), **dict(OURS, application_name="hermes-x")))
        self.assertEqual(result["dbname"], "")

    def test_caller_keywords_win(self):
        result = parse_dsn(dsnlib.normalize("application_name='my app' keepalives=0",
                                            application_name="hermes"))
        self.assertEqual((result["application_name"], result["keepalives"]), ("my app", "0"))

    def test_empty_dsn_is_libpq_defaults(self):
        self.assertEqual(dsnlib.parse(""), {})
        self.assertEqual(parse_dsn(dsnlib.normalize("")), OURS)

    def test_multi_host_and_uri(self):
        for dsn in ("host=a,b port=1,2 target_session_attrs=read-write",
                    "postgresql://u:p%40w@h1:1,h2:2/db?sslmode=disable",
                    "postgresql://[::1]:5433,h2/db", {"host": "a,b", "port": "1,2"}):
            self.assertEqual(parse_dsn(dsnlib.normalize(dsn)),
                             dict(dsnlib.parse(dsn), **OURS))

    def test_nothing_to_add_keeps_the_string(self):
        dsn = "dbname=x " + " ".join(f"{k}={v}" for k, v in OURS.items())
        self.assertIs(dsnlib.normalize(dsn), dsn)

    def test_bad_syntax(self):
        self.assertRaises(InvalidConfigurationException, dsnlib.normalize, "host=x oops")
        self.assertRaises(InvalidConfigurationException, dsnlib.normalize, 42)

    @settings(max_examples=200, deadline=None)
    @given(
        st.dictionaries(
            st.sampled_from(["host", "port", "dbname", "user", "password", "options",
                             "sslmode", "application_name", "target_session_attrs", "hostaddr"]),
            st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
            max_size=6,
        ),
        st.booleans(),
    )
    def test_libpq_reads_the_same_keywords_plus_ours(self, keywords, as_uri):
        """
        Any DSN libpq parses, as key=value or URI: libpq parses the
        normalized string to the same keywords, plus ours where it set none.
        """
        dsn = psycopg2.extensions.make_dsn(**keywords) if keywords else ""
        if as_uri:
            dsn = "postgresql:///?" + "&".join(
                f"{k}={quote(v, safe='')}" for k, v in keywords.items()
            )
        try:
            original = parse_dsn(dsn)
        except psycopg2.ProgrammingError:
            assume(False)
        expected = dict(original, **{k: v for k, v in OURS.items() if k not in original})
        self.assertEqual(parse_dsn(dsnlib.normalize(dsn)), expected)


class CheckOptionsTests(unittest.TestCase):
    def assertRefused(self, dsn, fragment, environ=None):
        e = self.assertRaises(InvalidConfigurationException, check_options, dsn,
                              environ=environ or {})
        self.assertIn(fragment, str(e))
        self.assertNotIn("\n", str(e))
        self.assertNotIn(NOWHERE, str(e))
        return e

    def test_configuration_errors(self):
        self.assertRefused("port=notaport", 'invalid integer value "notaport"')
        self.assertRefused("port=99999999", 'invalid port number: "99999999"')
        self.assertRefused("sslmode=bogus", 'invalid sslmode value: "bogus"')
        self.assertRefused("target_session_attrs=bogus", "invalid target_session_attrs value")
        self.assertRefused("host=a,b port=1,2,3", "could not match 3 port numbers to 2 hosts")
        self.assertRefused("host=a,b port=1,notaport", '"notaport"')
        self.assertRefused("hostaddr=notip", 'could not parse network address "notip"')
        self.assertRefused("host=a,b hostaddr=127.0.0.1", "could not match 2 host names")
        self.assertRefused("service=hermes-no-such-service", "definition of service")
        self.assertRefused("host=x oops", "invalid DSN syntax")
        self.assertRefused("port=notaport", "notaport", environ={})
        set_environment(self, PGSSLMODE="nope")
        self.assertRefused("", 'invalid sslmode value: "nope"', environ=os.environ)

    def test_errors_are_scrubbed(self):
        e = self.assertRefused("postgresql://u:Wr@ngPass@h:notaport/db",
                               'invalid integer value "notaport"')
        self.assertNotIn("ngPass", str(e))
        e = self.assertRefused("postgresql://u:Wr@ngPass:x@h/db", "invalid")
        self.assertNotIn("ngPass", str(e))

    def test_good_options_pass(self):
        for dsn in ("", "dbname=", "host=db.example.com port=5432 sslmode=require",
                    "host=a,b port=1,2 target_session_attrs=read-write",
                    "postgresql://u:pw@h1:1,h2:2/db?target_session_attrs=primary",
                    "gssencmode=require host=db.example.com", "hostaddr=127.0.0.1,::1 host=a,b",
                    {"host": "x", "port": "5"}):
            check_options(dsn, environ={})

    def test_probe_names_no_host(self):
        """
        The check's DSN points every host at a socket path that cannot
        exist and empties hostaddr: nothing to resolve, nothing to reach,
        whatever the DSN or PGHOSTADDR say.
        """
        for keywords, environ, count in (({"host": "a,b.example.com", "port": "1,2"}, {}, 2),
                                         ({}, {"PGHOST": "x,y,z"}, 3),
                                         ({"hostaddr": "10.0.0.1"}, {}, 1),
                                         ({}, {"PGHOSTADDR": "10.0.0.1"}, 1)):
            probe = parse_dsn(probe_dsn(keywords, environ))
            self.assertEqual(probe["host"].split(","), [NOWHERE] * count)
            self.assertEqual(probe["hostaddr"], "")
