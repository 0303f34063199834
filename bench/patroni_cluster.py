"""
The demo cluster of docs/failover.rst ("A Patroni cluster"), made from the
files in C{examples/patroni/} for C{bench/patroni.py}: etcd and two Patroni
nodes running as C{postgres}, and the C{twistd hermes} command lines of
C{hermes.sh}.

The files are copied into a fresh directory under the system temp
directory with C{/srv/demo} replaced by it; the ports are the files' own
unless one of them is taken, then every one of them is replaced by a free
port (consistently, in every file).  Nothing here uses the reactor:
processes are C{subprocess.Popen}s, waits are C{time.sleep} loops.
"""

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request

from tests.support.fleet import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples", "patroni")
DEMO = "/srv/demo"  # the recipe's directory, replaced in every file
PORTS = (2479, 2480, 8008, 8009, 5441, 5442)  # etcd client/peer, REST, PostgreSQL
RUN_AS = "postgres"


def port_free(port):
    """
    @return: whether a server could listen on 127.0.0.1:C{port} right now
        (with C{SO_REUSEADDR}, as servers bind: the connections a last run
        left in TIME_WAIT do not count).
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres():
    """@return: C{Popen} keywords running a child as C{postgres}, nothing else of root's."""
    user = pwd.getpwnam(RUN_AS)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [],
            "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": user.pw_dir, "LANG": "C.UTF-8"}}


class Node:
    """One Patroni node: its YAML, REST and PostgreSQL ports, data directory, DSN."""

    def __init__(self, demo, name):
        self.name = name
        self.yml = os.path.join(demo.base, f"{name}.yml")
        with open(self.yml) as f:
            text = f.read()
        self.rest_port, self.pg_port = (int(p) for p in re.findall(r"listen: 127\.0\.0\.1:(\d+)", text))
        self.data_dir = re.search(r"data_dir: (\S+)", text).group(1)
        with open(os.path.join(demo.base, f"{name}.dsn")) as f:
            self.dsn = f.read().strip()
        self.process = None

    def rest(self, path):
        """@return: the HTTP status of C{GET path} on its REST API (C{None}: no answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.rest_port}{path}", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def postmaster_pid(self):
        with open(os.path.join(self.data_dir, "postmaster.pid")) as f:
            return int(f.readline())


class Demo:
    """
    The recipe's files in a directory of their own, and the processes run
    from them.

    @ivar base: the directory standing for C{/srv/demo}.
    @ivar ports: the recipe's port -> the port used.
    """

    def __init__(self, patroni_bin):
        self.patroni_bin = patroni_bin
        self.base = tempfile.mkdtemp(prefix="hp-")  # short: socket paths stay < 108 bytes
        postgres = pwd.getpwnam(RUN_AS)
        os.chown(self.base, postgres.pw_uid, postgres.pw_gid)
        os.chmod(self.base, 0o755)
        taken = [p for p in PORTS if not port_free(p)]
        self.ports = {p: (free_port() if taken else p) for p in PORTS}
        self.substituted = taken
        for name in sorted(os.listdir(EXAMPLES)):
            with open(os.path.join(EXAMPLES, name)) as f:
                text = f.read().replace(DEMO, self.base)
            for old, new in self.ports.items():
                text = re.sub(rf"\b{old}\b", str(new), text)
            path = os.path.join(self.base, name)
            with open(path, "w") as f:
                f.write(text)
            os.chown(path, postgres.pw_uid, postgres.pw_gid)
            os.chmod(path, 0o600 if name.endswith(".dsn") else 0o644)
        self.nodes = {name: Node(self, name) for name in ("node1", "node2")}
        self.etcd = None

    def path(self, name):
        return os.path.join(self.base, name)

    def _spawn(self, argv, log):
        with open(self.path(log), "ab") as out:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=self.base, **as_postgres())

    def start_etcd(self, timeout=30):
        """Start etcd (C{sh etcd.sh}) as postgres and wait until it is healthy."""
        self.etcd = self._spawn(["sh", self.path("etcd.sh")], "etcd.log")
        url = f"http://127.0.0.1:{self.ports[2479]}/health"

        def healthy():
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    return json.loads(r.read()).get("health") == "true"
            except (OSError, ValueError):
                return False

        wait_for(healthy, timeout, "etcd healthy", 0.1)

    def start_node(self, name):
        node = self.nodes[name]
        node.process = self._spawn([os.path.join(self.patroni_bin, "patroni"), node.yml], f"{name}.log")

    def leader(self):
        """@return: the node whose REST API says it is the primary, or C{None}."""
        for node in self.nodes.values():
            if node.rest("/primary") == 200:
                return node
        return None

    def other(self, node):
        return next(n for n in self.nodes.values() if n is not node)

    def healthy(self):
        """@return: the leader if there is one and the other node is its synchronous standby."""
        leader = self.leader()
        if leader is not None and self.other(leader).rest("/sync") == 200:
            return leader
        return None

    def patronictl(self, *args):
        """Run C{patronictl -c node1.yml ARGS} as postgres; @return: its output (raises if it failed)."""
        return subprocess.run([os.path.join(self.patroni_bin, "patronictl"), "-c", self.nodes["node1"].yml]
                              + list(args), check=True, capture_output=True, text=True, cwd=self.base,
                              **as_postgres()).stdout

    def hermes_commands(self):
        """
        @return: C{(user, arguments, log)} of each C{twistd} command of
            C{hermes.sh}: C{user} is C{"postgres"} for a C{runuser -u
            postgres} line, else C{None}; C{arguments} come after the
            C{twistd} binary, up to the output redirection; C{log} is
            where that sends standard output.
        """
        with open(self.path("hermes.sh")) as f:
            lines = f.read().replace("\\\n", " ").splitlines()
        commands = []
        for line in lines:
            if "$TWISTD" not in line or line.lstrip().startswith(("#", "TWISTD=")):
                continue
            words = shlex.split(line)
            redirect = words.index(">")
            user = words[2] if words[0] == "runuser" else None
            commands.append((user, words[words.index("$TWISTD") + 1:redirect], words[redirect + 1]))
        return commands

    def stop(self, timeout=30):
        """
        SIGTERM the Patroni nodes (each stops its PostgreSQL), then etcd
        (the nodes need it to stop cleanly); SIGKILL what has not ended
        within C{timeout} s, and any postmaster still running from a data
        directory.
        """
        nodes = [n.process for n in self.nodes.values() if n.process is not None]
        for group in (nodes, [self.etcd] if self.etcd is not None else []):
            for process in group:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in group:
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for node in self.nodes.values():
            try:
                pid = node.postmaster_pid()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"postgres" not in f.read():
                        continue
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass

    def remove_data(self):
        """Delete the data directories and etcd's (logs and JSON lines stay)."""
        for node in self.nodes.values():
            shutil.rmtree(node.data_dir, ignore_errors=True)
        shutil.rmtree(self.path("etcd"), ignore_errors=True)

