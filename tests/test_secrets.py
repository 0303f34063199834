"""
Tests for L{hermes_tx.secrets}: the one scrubber, with the password shapes
that broke messages before (short ones, and ones holding C{@ : / %}).
"""

import re
from urllib.parse import quote

import psycopg2
from twisted.internet import defer
from twisted.trial import unittest

from hermes_tx.postgres import dsn as dsnlib
from tests.support.shared import wait_until
from tests.support.twistd import run_twistd
from hermes_tx.secrets import MASK, SCRUB_ANYWHERE_FROM, Secrets, basic_token, mask_passwords, scrub

#: passwords of the shapes issue 18 names, and a long plain one
SHAPES = ["o", "1", "on", "p@ss", "a:b", "x/y", "50%", "Wr@ngPassXYZ", "%41@:/x%", "long-plain-secret"]

#: where libpq may cut a password it was not given as meant
PIECES = re.compile(r"[\s'\"\\@:/?&=,\[\]]+")


def libpq_error(dsn):
    try:
        psycopg2.connect(dsn).close()
    except psycopg2.Error as e:
        return str(e)
    raise AssertionError("connected")


class ScrubTests(unittest.TestCase):
    def test_short_secrets_only_where_they_stand_alone(self):
        """
        A short password does not mangle the words that contain it: issue
        18's C{password=o} made "cannot connect" "cann***t c***nnect".
        """
        self.assertEqual(scrub("cannot connect: password o refused", {"o"}),
                         "cannot connect: password *** refused")
        self.assertEqual(scrub('host "127.0.0.1" port 1', {"1", "0.0"}), 'host "127.0.0.1" port ***')
        self.assertEqual(scrub("a Wr@ngPass b", {"Wr", "Wr@ngPass"}), "a *** b")
        self.assertEqual(scrub("prefixLongSecret1suffix", {"LongSecret1"}), "prefix***suffix")
        self.assertEqual(scrub("nothing", ()), "nothing")
        self.assertEqual(scrub(42, {"4"}), "42")

    def test_mask_passwords(self):
        """
        Password-looking parts are masked even when not known: keywords,
        any URL's user information, query parameters.
        """
        self.assertEqual(mask_passwords("host=h password=xyz user=u"), "host=h password=*** user=u")
        self.assertEqual(mask_passwords("password='a b' x"), "password=*** x")
        self.assertEqual(mask_passwords("amqp://u:pw@h/v and postgresql://u:p@h/db"),
                         "amqp://u:***@h/v and postgresql://u:***@h/db")
        self.assertEqual(mask_passwords("https://h/x?sslpassword=a&password=b&c=d"),
                         "https://h/x?sslpassword=***&password=***&c=d")

    def test_secrets_like_the_sinks(self):
        """
        L{Secrets} does what C{hermes_tx.sinks.urls.Secrets} does (its
        tests, run on this class), so the sinks can use it.
        """
        s = Secrets("pa ss", None, "")
        s.add_basic_auth("bob", "hunter2")
        text = "a pa ss b pa%20ss c hunter2 d Ym9iOmh1bnRlcjI= e"
        self.assertEqual(s.scrub(text), "a *** b *** c *** d *** e")
        token = Secrets()
        token.add_basic_auth("sk_live_123", None)
        self.assertEqual(token.scrub("401 for sk_live_123"), "401 for ***")
        self.assertEqual(basic_token("bob", "hunter2"), "Ym9iOmh1bnRlcjI=")
        self.assertNotIn("hunter2", repr(s))
        self.assertEqual(len(Secrets()), 0)

    def test_every_shape_in_every_form(self):
        """
        For each password shape, in a C{key=value} DSN, in a URI (encoded,
        and naively not): once scrubbed with the DSN's secrets, neither
        the DSN, nor libpq's error, nor any value libpq parsed (all a
        libpq message may quote) shows the password or a piece libpq may
        have split off.  (Only DSNs whose host is 127.0.0.1 port 1 are
        tried: nothing is resolved or reached.)
        """
        for password in SHAPES:
            pieces = {password} | set(PIECES.split(password)) - {""}
            for dsn in [
                psycopg2.extensions.make_dsn(host="127.0.0.1", port="1", user="hermes-u", password=password),
                f"postgresql://hermes-u:{quote(password, safe='')}@127.0.0.1:1/hermes-db",
                f"postgresql://hermes-u:{password}@127.0.0.1:1/hermes-db",
            ]:
                secrets = dsnlib.dsn_secrets(dsn, environ={})
                try:
                    parsed = psycopg2.extensions.parse_dsn(dsn)
                except psycopg2.ProgrammingError as e:
                    parsed = {"error": str(e)}
                texts = [dsn, f"cannot connect: {dsn}"]
                texts += [f'"{v}"' for k, v in parsed.items() if k != "password"]
                if (parsed.get("host"), parsed.get("port")) == ("127.0.0.1", "1"):
                    texts.append(libpq_error(dsn))
                for text in texts:
                    scrubbed = secrets.scrub(text).replace(MASK, "\x00")
                    for piece in pieces:
                        self.assertFalse(shows(scrubbed, piece), (password, dsn, text, scrubbed))
                    self.assertIn("connect", secrets.scrub("cannot connect"))


def shows(text, secret):
    """
    @return: True when C{secret} can be read in C{text}: anywhere when long,
        as a whole token (not inside a word, number or address) when short.
    """
    if len(secret) >= SCRUB_ANYWHERE_FROM:
        return secret in text
    return re.search(rf"(?<![\w.\-]){re.escape(secret)}(?![\w.\-])", text) is not None


class TwistdTests(unittest.TestCase):
    """
    C{twistd hermes} with DSNs it cannot connect with (port 1 of
    127.0.0.1, or a host made of a password piece): its log shows no
    fragment of the password.
    """

    @defer.inlineCallbacks
    def test_password_shapes_never_shown(self):
        dsns = {}
        for password in ("o", "1", "Wr@ngPassXYZ", "a:b@c", "x/y@z"):
            dsns[f"postgresql://u:{password}@127.0.0.1:1/db"] = password
        for password in ("o", "p@ss w/o:rd%"):
            dsns[psycopg2.extensions.make_dsn(host="127.0.0.1", port="1", user="u", password=password)] = password
        running = [(dsn, run_twistd(["--dsn", dsn, "--channel", "c", "--role-check-interval", "0.3"]))
                   for dsn in dsns]
        ended = set()
        for dsn, (proto, _) in running:
            proto.ended.addBoth(lambda _, dsn=dsn: ended.add(dsn))
        try:
            # each fails to connect (and says so), or refuses the DSN and exits
            yield wait_until(lambda: all(b"role check failed" in p.out + p.err or dsn in ended
                                         for dsn, (p, _) in running),
                             timeout=30, what="every instance failing to connect")
        finally:
            for dsn, (_, transport) in running:
                if dsn not in ended:
                    transport.signalProcess("TERM")
        for dsn, (proto, _) in running:
            yield proto.ended
            output = (proto.out + proto.err).decode()
            self.assertNotIn("Traceback", output)
            password = dsns[dsn]
            for piece in {password} | set(PIECES.split(password)) - {""}:
                self.assertFalse(shows(output.replace(MASK, "\x00"), piece), (dsn, piece, output))
