# -*- test-case-name: tests.test_listencheck_pg -*-
"""
A throwaway pgbouncer in front of a throwaway PostgreSQL
(L{tests.support.pgcluster.Cluster}), for tests.

Everything here is blocking: call it from C{setUpClass}/C{tearDownClass}
(L{tests.support.fixtures.ClassFixtures}), never from the reactor.  Each
pgbouncer lives in a fresh directory under the system temp directory and
listens on a free loopback port; pgbouncer refuses to run as root, so as root
it runs as C{postgres} (C{-u postgres}, as the clusters do).  A machine without pgbouncer
makes L{PgBouncer.start} raise L{PgBouncerNotFound}: the tests that need it
fail, they are not skipped (C{.ci/run} installs it).
"""

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import psycopg2

_LIVE = set()  # pgbouncers not yet stopped, stopped by the atexit hook

#: where Debian's package puts the binary
_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer")


class PgBouncerNotFound(RuntimeError):
    """The pgbouncer binary could not be found."""


def find_pgbouncer():
    """
    @return: the path of the pgbouncer binary (C{$HERMES_PGBOUNCER}, then
        C{PATH}, then the usual places).
    @raise PgBouncerNotFound: there is none.
    """
    env = os.environ.get("HERMES_PGBOUNCER")
    candidates = [env] if env else [shutil.which("pgbouncer") or ""] + list(_CANDIDATES)
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise PgBouncerNotFound(
        "pgbouncer not found (apt-get install pgbouncer, or set HERMES_PGBOUNCER)")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgBouncer(object):
    """
    One pgbouncer forwarding every database of C{cluster}, trusting the
    users it is given (no passwords: the cluster trusts them too).

    @ivar host: C{'127.0.0.1'}.
    @ivar port: the port it listens on.
    @ivar pool_mode: C{"transaction"} or C{"session"}.
    @ivar log_path: its log file.
    """

    host = "127.0.0.1"

    def __init__(self, cluster, pool_mode="transaction", users=("postgres",)):
        """
        @param cluster: the L{tests.support.pgcluster.Cluster} it forwards to.
        @param pool_mode: C{"transaction"}, C{"session"} or C{"statement"}.
        @param users: the role names it lets in.
        """
        self.binary = find_pgbouncer()
        self.cluster = cluster
        self.pool_mode = pool_mode
        self.users = list(users)
        parent = tempfile.gettempdir()
        self.base_dir = tempfile.mkdtemp(prefix="hermes-pgb-", dir=parent)
        os.chmod(self.base_dir, 0o755)
        self.ini_path = os.path.join(self.base_dir, "pgbouncer.ini")
        self.log_path = os.path.join(self.base_dir, "log")
        self.port = None
        self._proc = None
        self._as_root = os.geteuid() == 0

    def _write_config(self):
        userlist = os.path.join(self.base_dir, "userlist.txt")
        with open(userlist, "w") as f:
            for user in self.users:
                f.write('"%s" ""\n' % (user.replace('"', '""'),))
        with open(self.ini_path, "w") as f:
            f.write(
                "[databases]\n"
                "* = host=%s port=%d\n"
                "[pgbouncer]\n"
                "listen_addr = %s\n"
                "listen_port = %d\n"
                "unix_socket_dir =\n"
                "auth_type = trust\n"
                "auth_file = %s\n"
                "pool_mode = %s\n"
                "logfile = %s\n"
                "pidfile =\n"
                "max_client_conn = 100\n"
                "default_pool_size = 10\n"
                "ignore_startup_parameters = extra_float_digits\n"
                % (self.cluster.host, self.cluster.port, self.host, self.port, userlist,
                   self.pool_mode, self.log_path))
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            for path in (self.base_dir, userlist, self.ini_path):
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def start(self, timeout=10.0):
        """
        Start it on a free port and wait until it lets C{postgres} in.

        @raise RuntimeError: with its log's tail, if it does not come up.
        """
        self.port = _free_port()
        self._write_config()
        cmd = [self.binary, self.ini_path]
        if self._as_root:
            cmd[1:1] = ["-u", "postgres"]  # it drops root itself: its pid is ours to signal
        self._proc = subprocess.Popen(cmd, cwd=tempfile.gettempdir(),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("pgbouncer did not start; log tail:\n"
                                       + "\n".join(self.read_log().splitlines()[-20:]))
                time.sleep(0.05)

    def stop(self):
        """Stop it (SIGTERM, then SIGKILL after 5 s) and wait for it."""
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def destroy(self):
        """Stop it and remove its directory."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def read_log(self):
        """@return: its log (C{""} if there is none yet)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def dsn_dict(self, dbname="postgres", user="postgres", **extra):
        """@return: libpq parameters reaching C{cluster} through it."""
        params = {"host": self.host, "port": self.port, "user": user, "dbname": dbname}
        params.update(extra)
        return params

    def dsn(self, dbname="postgres", user="postgres", **extra):
        """@return: a libpq C{key=value} string; parameters as L{dsn_dict}."""
        return " ".join("%s=%s" % kv for kv in self.dsn_dict(dbname, user, **extra).items())


@atexit.register
def _stop_all():
    """Fallback for aborted runs: leave no pgbouncer running."""
    for bouncer in list(_LIVE):
        bouncer.destroy()
