"""
The Patroni recipe's files (C{examples/patroni/}, included by
docs/failover.rst) agree with each other and with C{twistd hermes}.
C{bench/patroni.py} runs them for real (it needs root, etcd and Patroni);
these checks are cheap and run with the suite.
"""

import os
import re
import shlex

from psycopg2.extensions import parse_dsn
from twisted.trial import unittest

from hermes_tx.twistd import Options

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "patroni")
#: ports the recipe must not use: the usual PostgreSQL's, and those of
#: Debian's etcd.service
TAKEN = {5432, 2379, 2380}


def read(name):
    with open(os.path.join(EXAMPLES, name), encoding="utf-8") as f:
        return f.read()


def hermes_commands():
    """@return: the words of each C{$TWISTD} command of hermes.sh, up to its redirection."""
    commands = []
    for line in read("hermes.sh").replace("\\\n", " ").splitlines():
        if "$TWISTD" in line and not line.lstrip().startswith(("#", "TWISTD=")):
            words = shlex.split(line)
            commands.append(words[:words.index(">")])
    return commands


class PatroniFilesTests(unittest.TestCase):
    def node(self, name):
        text = read(f"{name}.yml")
        rest, pg = (int(p) for p in re.findall(r"listen: 127\.0\.0\.1:(\d+)", text))
        return {"text": text, "rest": rest, "pg": pg, "etcd": int(re.search(r"hosts: 127\.0\.0\.1:(\d+)", text)[1]),
                "data_dir": re.search(r"data_dir: (\S+)", text)[1]}

    def test_nodes_differ_only_in_name_ports_and_paths(self):
        """
        node2.yml is node1.yml with its name, REST and PostgreSQL ports, data
        directory and pgpass file; both ask for synchronous mode and a
        failover (not a restart in place) when the primary's postmaster dies.
        """
        one, two = self.node("node1"), self.node("node2")
        made = (one["text"].replace("node1", "node2").replace("pgpass1", "pgpass2")
                .replace(str(one["rest"]), str(two["rest"])).replace(str(one["pg"]), str(two["pg"])))
        self.assertEqual(made, two["text"])
        for node in (one, two):
            self.assertRegex(node["text"], r"\n    synchronous_mode: true\b")
            self.assertRegex(node["text"], r"\n    primary_start_timeout: 0\b")

    def test_ports_agree_and_clash_with_nothing_usual(self):
        """
        etcd.sh serves the port the nodes use, advertises what it listens
        on, and no port is 5432, 2379 or 2380; the DSN files name the nodes'
        PostgreSQL ports.
        """
        etcd = read("etcd.sh")
        one, two = self.node("node1"), self.node("node2")
        client = one["etcd"]
        self.assertEqual(two["etcd"], client)
        for flag in ("listen-client-urls", "advertise-client-urls"):
            self.assertIn(f"--{flag} http://127.0.0.1:{client}", etcd)
        peer = int(re.search(r"--listen-peer-urls http://127\.0\.0\.1:(\d+)", etcd)[1])
        self.assertIn(f"--initial-advertise-peer-urls http://127.0.0.1:{peer}", etcd)
        self.assertIn(f"--initial-cluster demo=http://127.0.0.1:{peer}", etcd)
        ports = {client, peer, one["rest"], two["rest"], one["pg"], two["pg"]}
        self.assertEqual(len(ports), 6)
        self.assertEqual(ports & TAKEN, set())
        for name, expected in (("node1", str(one["pg"])), ("node2", str(two["pg"])),
                               ("cluster", f"{one['pg']},{two['pg']}")):
            params = parse_dsn(read(f"{name}.dsn").strip())
            self.assertEqual(params["port"], expected, name)

    def test_hermes_commands(self):
        """
        hermes.sh runs twistd hermes on the channel and the outbox through
        cluster.dsn, and one per node watching that node's data directory as
        postgres; every option is one C{twistd hermes} has.
        """
        known = set(Options().synonyms)
        commands = hermes_commands()
        watched = {}
        for words in commands:
            args = words[words.index("hermes") + 1:]
            for arg in args:
                if arg.startswith("-"):
                    self.assertIn(arg.lstrip("-"), known, " ".join(words))
            dsn = os.path.basename(args[args.index("--dsn-file") + 1])
            if "--watch-path" in args:
                self.assertEqual(words[:4], ["runuser", "-u", "postgres", "--"])
                watched[dsn] = args[args.index("--watch-path") + 1]
            else:
                self.assertEqual(dsn, "cluster.dsn")
        self.assertEqual({tuple(w[w.index("hermes") + 1:]).count("--outbox") for w in commands}, {0, 1})
        self.assertEqual(watched, {"node1.dsn": self.node("node1")["data_dir"],
                                   "node2.dsn": self.node("node2")["data_dir"]})
