# -*- test-case-name: tests.test_pgcluster -*-
"""
Throwaway PostgreSQL clusters (primary and streaming standbys) for tests.

Everything here is blocking: call it from C{setUpClass}/C{tearDownClass}
(trial needs L{tests.support.fixtures.ClassFixtures} to call those), never
from the reactor.  Clusters live in fresh directories under the system
temp directory; when running as root the server runs as C{postgres}.
"""

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from urllib.parse import quote

import psycopg2

from tests.support.crash import CrashOperations
from tests.support.replication import StandbyOperations

_LIVE = set()  # clusters not yet destroyed, cleaned up by the atexit hook


class PostgresNotFound(RuntimeError):
    """The PostgreSQL server binaries (C{initdb} etc.) could not be found."""


def find_bindir():
    """
    Return the directory holding C{initdb}, C{pg_ctl} and friends.

    Looks at C{$HERMES_PG_BINDIR} (used exclusively when set), then
    C{pg_config --bindir}, then the highest C{/usr/lib/postgresql/*/bin}.

    @raise PostgresNotFound: no candidate directory contains C{initdb}.
    """
    env = os.environ.get("HERMES_PG_BINDIR")
    if env:
        candidates = [env]
    else:
        candidates = []
        try:
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True,
                                 text=True, check=True, cwd=tempfile.gettempdir())
            candidates.append(out.stdout.strip())
        except (OSError, subprocess.CalledProcessError):
            pass
        candidates += sorted(  # highest numeric version first
            glob.glob("/usr/lib/postgresql/*/bin"), reverse=True, key=lambda p: [
                int(v) if v.isdigit() else -1 for v in p.split("/")[-2].split(".")])
    for path in candidates:
        if os.access(os.path.join(path, "initdb"), os.X_OK):
            return path
    raise PostgresNotFound(
        "PostgreSQL server binaries not found (looked for initdb in %s). "
        "Install the PostgreSQL server or set HERMES_PG_BINDIR to its bin "
        "directory." % (candidates or "no candidate directories",))


def _free_port():
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster(StandbyOperations, CrashOperations):
    """
    One PostgreSQL server in its own temp directory.  Standbys, switchovers
    and re-clones come from L{StandbyOperations}, crashes from
    L{CrashOperations}.

    @ivar host: C{'127.0.0.1'}, the TCP address the server listens on.
    @ivar port: its TCP port (also the Unix socket's port number).
    @ivar base_dir: the temp directory holding everything below.
    @ivar data_dir: the data directory (C{base_dir/data}).
    @ivar socket_dir: the Unix socket directory (C{base_dir/sock}).
    @ivar log_path: the server log file (C{base_dir/log}).
    """

    host = "127.0.0.1"

    def __init__(self):
        """Make the empty directories; use L{create_primary}/L{create_standby}."""
        self.bindir = find_bindir()
        self._as_root = os.geteuid() == 0
        parent = tempfile.gettempdir()
        if len(parent) > 60:  # keep <socket_dir>/.s.PGSQL.<port> < 108 bytes
            parent = "/tmp"
        self.base_dir = tempfile.mkdtemp(prefix="hermes-pg-", dir=parent)
        os.chmod(self.base_dir, 0o755)
        self.data_dir = os.path.join(self.base_dir, "data")
        self.socket_dir = os.path.join(self.base_dir, "sock")
        self.log_path = os.path.join(self.base_dir, "log")
        self.port = _free_port()
        self._conf_port = None  # port last written to postgresql.conf
        _LIVE.add(self)
        os.mkdir(self.socket_dir, 0o755)
        os.mkdir(self.data_dir, 0o700)
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            for path in (self.base_dir, self.socket_dir, self.data_dir):
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def _run(self, tool, *args, check=True):
        """
        Run a PostgreSQL binary (as C{postgres} when we are root).

        @param tool: binary name in L{find_bindir}, e.g. C{"pg_ctl"}.
        @param args: its command-line arguments.
        @param check: raise C{RuntimeError} on a non-zero exit status.
        @return: the C{subprocess.CompletedProcess}.
        """
        cmd = [os.path.join(self.bindir, tool)] + list(args)
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              cwd=tempfile.gettempdir())
        if check and proc.returncode != 0:
            raise RuntimeError("%s failed (exit %d): %s%s" % (
                " ".join(cmd), proc.returncode, proc.stdout, proc.stderr))
        return proc

    def _append_conf(self, **settings):
        """Append C{name = value} lines (str values quoted) to postgresql.conf."""
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a") as f:
            f.write("\n# hermes_tx test cluster\n")
            for name, value in settings.items():
                if isinstance(value, str):
                    value = "'%s'" % value.replace("'", "''")
                f.write("%s = %s\n" % (name, value))

    @classmethod
    def create_primary(cls):
        """Initialise and start a new primary; return the started L{Cluster}."""
        self = cls()
        try:
            args = ["-D", self.data_dir, "-U", "postgres", "--auth=trust",
                    "--encoding=UTF8", "--no-sync"]
            proc = self._run("initdb", *(args + ["--locale=C.UTF-8"]), check=False)
            if proc.returncode != 0:
                self._run("initdb", *(args + ["--locale=C"]))
            self._append_conf(
                listen_addresses=self.host, unix_socket_directories=self.socket_dir,
                wal_level="replica", max_wal_senders=5, hot_standby="on",
                fsync="off", synchronous_commit="off",
                # pg_rewind (rejoin_as_standby_of) needs both, and WAL back
                # to the last checkpoint before the histories diverged.
                full_page_writes="on", wal_log_hints="on", wal_keep_size="128MB",
                log_min_messages="warning", max_connections=50)
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def start(self, attempts=5):
        """
        Start the server and wait until it accepts connections.

        @param attempts: how many free ports to try if the port is taken.
        @raise RuntimeError: with the log's tail, if it does not start.
        """
        self._wait_reaped()
        for attempt in range(attempts):
            if self._conf_port != self.port:
                self._append_conf(port=self.port)
                self._conf_port = self.port
            proc = self._run("pg_ctl", "-D", self.data_dir, "-l", self.log_path,
                             "-w", "-t", "30", "start", check=False)
            if proc.returncode == 0:
                return
            log = self.read_log()
            if "could not bind" not in log and "already in use" not in log:
                break
            self.port = _free_port()
        raise RuntimeError("PostgreSQL in %s failed to start: %s%s\n--- log tail:\n%s"
                           % (self.data_dir, proc.stdout, proc.stderr,
                              "\n".join(self.read_log().splitlines()[-20:])))

    def stop(self, mode="fast"):
        """Stop the server and wait; C{mode}: fast, immediate or smart."""
        if mode not in ("fast", "immediate", "smart"):
            raise ValueError("bad shutdown mode %r" % (mode,))
        self._run("pg_ctl", "-D", self.data_dir, "-m", mode, "-w", "stop")

    def restart(self, mode="fast"):
        """Stop (with shutdown C{mode}) and start again, on the same port."""
        self.stop(mode)
        self.start()

    def in_recovery(self):
        """@return: C{pg_is_in_recovery()}: C{True} on a standby."""
        return self.execute("SELECT pg_is_in_recovery()")[0][0]

    def promote(self):
        """Promote this standby to a primary; returns once promoted."""
        self._run("pg_ctl", "-D", self.data_dir, "-w", "promote")

    def is_running(self):
        """Return C{True} if a server is running on this data directory."""
        if self._crashed or not os.path.isdir(self.data_dir):
            return False
        return self._run("pg_ctl", "-D", self.data_dir, "status",
                         check=False).returncode == 0

    def read_log(self):
        """Return the server log's contents (C{""} if there is none yet)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def dsn_dict(self, dbname="postgres", **extra):
        """
        Return libpq connection parameters as a dict.

        @param dbname: database name.
        @param extra: more libpq keywords, e.g. C{application_name="x"}.
        """
        params = {"host": self.host, "port": self.port, "user": "postgres",
                  "dbname": dbname}
        params.update(extra)
        return params

    def dsn(self, dbname="postgres", **extra):
        """Return a libpq C{key=value} string; parameters as L{dsn_dict}."""
        def quoted(v):
            v = str(v)
            if v and not any(c in v for c in " '\\"):
                return v
            return "'%s'" % v.replace("\\", "\\\\").replace("'", "\\'")
        return " ".join("%s=%s" % (k, quoted(v))
                        for k, v in self.dsn_dict(dbname, **extra).items())

    def uri(self, dbname="postgres", **extra):
        """Return a C{postgresql://} URI; parameters as L{dsn_dict}."""
        query = "&".join("%s=%s" % (quote(k), quote(str(v), safe=""))
                         for k, v in extra.items())
        return "postgresql://postgres@%s:%d/%s%s" % (
            self.host, self.port, quote(dbname, safe=""), "?" + query if query else "")

    def execute(self, sql, params=None, dbname="postgres"):
        """
        Run one statement in autocommit on a short-lived connection.

        @param sql: the statement, with C{%s} placeholders.
        @param params: values for the placeholders, or C{None}.
        @param dbname: database to connect to.
        @return: the fetched rows (list of tuples), or C{None} if the
            statement returns no result set.
        """
        conn = psycopg2.connect(self.dsn(dbname, application_name="hermes-pgcluster"))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description is not None else None
        finally:
            conn.close()

    def notify(self, channel, payload=""):
        """Send C{pg_notify(channel, payload)}; the channel name is verbatim."""
        self.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def backend_pids(self, application_name=None):
        """
        Return pids of client backends (not our own query's backend).

        @param application_name: only those with this application_name, or
            C{None} for all client backends.
        """
        sql = ("SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
               " AND backend_type = 'client backend'")
        if application_name is None:
            return [r[0] for r in self.execute(sql)]
        sql += " AND application_name = %s"
        return [r[0] for r in self.execute(sql, (application_name,))]

    def terminate_backends(self, application_name):
        """
        Terminate client backends and WAL senders with this application_name.

        @param application_name: the application_name to kill (a standby's
            WAL sender has its L{standby_name}, C{hermes-standby-<port>}).
        @return: how many backends were signalled.
        """
        rows = self.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND application_name = %s"
            " AND backend_type IN ('client backend', 'walsender')",
            (application_name,))
        return sum(1 for (ok,) in rows if ok)

    def destroy(self):
        """Stop the server immediately (if running), remove everything."""
        # After crash() nothing runs, and pg_ctl would wait for a zombie.
        if not self._crashed and os.path.exists(
                os.path.join(self.data_dir, "postmaster.pid")):
            self._run("pg_ctl", "-D", self.data_dir, "-m", "immediate", "-w",
                      "stop", check=False)
        shutil.rmtree(self.base_dir, ignore_errors=True)
        _LIVE.discard(self)


@atexit.register
def _destroy_all():
    """Fallback for aborted runs: do not leave servers or directories."""
    for cluster in list(_LIVE):
        cluster.destroy()
