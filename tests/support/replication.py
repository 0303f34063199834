# -*- test-case-name: tests.test_pgcluster -*-
"""
Streaming replication for throwaway clusters, as an HA manager (Patroni)
does it: make a standby, re-clone one into a fresh data directory
(C{patronictl reinit}), rejoin a stopped old primary as a standby of the
new one, and a whole switchover.

L{StandbyOperations} is a mixin of L{tests.support.pgcluster.Cluster}; like
the rest of it, everything here blocks.
"""

import os
import pwd
import shutil
import time

#: What C{pg_rewind} prints when the target's history has not diverged.
NO_REWIND = "no rewind required"


class StandbyOperations(object):
    """
    Standby making and rejoining for a L{tests.support.pgcluster.Cluster}.

    @ivar rewound: after L{rejoin_as_standby_of}, whether C{pg_rewind} had
        to rewrite the data directory (C{None} before any rejoin).
    """

    rewound = None
    _standby_name = None

    @property
    def standby_name(self):
        """
        The name this server streams under as a standby (its walreceiver's
        C{application_name}, and the primary's WAL sender's):
        C{hermes-standby-<port>}, with the port it first had.
        """
        if self._standby_name is None:
            self._standby_name = "hermes-standby-%d" % (self.port,)
        return self._standby_name

    def create_standby(self, timeout=10.0):
        """
        Make, start and return a new L{Cluster} streaming from this one.

        @param timeout: seconds to wait until the standby is in recovery and
            this primary's C{pg_stat_replication} shows it streaming.
        """
        standby = type(self)()
        try:
            standby._clone_from(self)
            standby.start()
            standby.wait_streaming(self, timeout)
        except BaseException:
            standby.destroy()
            raise
        return standby

    def recreate_as_standby_of(self, primary, timeout=10.0):
        """
        Re-clone this server as C{patronictl reinit} does: stop it (fast)
        if it runs, delete its data directory entirely, C{pg_basebackup}
        from C{primary} into the same path, start it on the same port and
        wait until it streams.  Anything watching the old directory (an
        inotify watch) watches a deleted directory afterwards.

        @param primary: the L{Cluster} to clone, running.
        @param timeout: seconds to wait for streaming.
        """
        if self.is_running():
            self.stop("fast")
        shutil.rmtree(self.data_dir)
        os.mkdir(self.data_dir, 0o700)
        self._chown(self.data_dir)
        self._clone_from(primary)
        self.start()
        self.wait_streaming(primary, timeout)

    def rejoin_as_standby_of(self, primary, timeout=10.0):
        """
        Make this stopped server (a former primary) a streaming standby of
        C{primary} (its former standby, promoted), as Patroni does after a
        switchover: C{pg_rewind} (which changes nothing and says
        L{NO_REWIND} when the old primary was stopped cleanly after its
        standby had received everything, and otherwise rewinds it to the
        point where the histories diverged), C{standby.signal}, a
        C{primary_conninfo} naming C{primary}, start, wait until streaming.
        L{rewound} tells which it was.

        @param primary: the new primary, running.
        @param timeout: seconds to wait for streaming.
        @raise RuntimeError: this server is running, or C{pg_rewind} failed.
        """
        if self.is_running():
            raise RuntimeError("stop the server in %s before rejoining it" % (self.data_dir,))
        # pg_rewind reads the source's timeline from its control file,
        # which a promotion updates only at its next checkpoint.
        primary.execute("CHECKPOINT")
        configs = {}
        for name in ("postgresql.conf", "postgresql.auto.conf"):
            with open(os.path.join(self.data_dir, name)) as f:
                configs[name] = f.read()
        proc = self._run("pg_rewind", "-D", self.data_dir, "--no-sync",
                         "--source-server=" + primary._local_conninfo())
        self.rewound = NO_REWIND not in proc.stdout + proc.stderr
        # A rewind copies the source's configuration: keep ours.
        for name, text in configs.items():
            with open(os.path.join(self.data_dir, name), "w") as f:
                f.write(text)
        self._follow(primary)
        self.start()
        self.wait_streaming(primary, timeout)

    def wait_streaming(self, primary, timeout=10.0):
        """
        Wait until this server is in recovery and C{primary}'s
        C{pg_stat_replication} shows it (by L{standby_name}) streaming.

        @raise RuntimeError: with this server's log tail, after C{timeout}.
        """
        sql = ("SELECT count(*) FROM pg_stat_replication"
               " WHERE application_name = %s AND state = 'streaming'")
        deadline = time.monotonic() + timeout
        while not (self.in_recovery() and primary.execute(sql, (self.standby_name,))[0][0]):
            if time.monotonic() > deadline:
                raise RuntimeError("standby on port %d not streaming from port %d after "
                                   "%ss; log:\n%s" % (self.port, primary.port, timeout,
                                                      self.read_log()[-3000:]))
            time.sleep(0.02)

    # -- helpers ------------------------------------------------------------

    def _local_conninfo(self):
        """@return: a libpq string reaching this server over its Unix socket."""
        return "host=%s port=%d user=postgres dbname=postgres" % (self.socket_dir, self.port)

    def _clone_from(self, primary):
        """C{pg_basebackup} C{primary} into this (empty) data directory."""
        self._run("pg_basebackup", "-h", primary.socket_dir, "-p", str(primary.port),
                  "-U", "postgres", "-D", self.data_dir, "-X", "stream", "-c", "fast",
                  "--no-sync")
        # The copy has the primary's port and socket directory: ours follow
        # (the last setting wins); start() appends the port.
        self._append_conf(unix_socket_directories=self.socket_dir)
        self._conf_port = None
        self._follow(primary)

    def _follow(self, primary):
        """
        Write C{standby.signal} and a C{primary_conninfo} naming C{primary}
        (in C{postgresql.auto.conf}, which overrides C{postgresql.conf}).
        """
        auto = os.path.join(self.data_dir, "postgresql.auto.conf")
        with open(auto) as f:
            lines = [line for line in f if not line.startswith("primary_conninfo")]
        conninfo = "%s application_name=%s" % (primary._local_conninfo(), self.standby_name)
        lines.append("primary_conninfo = '%s'\n" % (conninfo.replace("'", "''"),))
        with open(auto, "w") as f:
            f.writelines(lines)
        signal_file = os.path.join(self.data_dir, "standby.signal")
        with open(signal_file, "w"):
            pass
        self._chown(signal_file)

    def _chown(self, path):
        """Give C{path} to C{postgres} when we are root (the server runs as it)."""
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)


def switchover(old, new, pause=2.0, rejoin=True, clock=time.monotonic, on_promoted=None):
    """
    A Patroni-style switchover: stop the primary C{old} (C{-m fast}), wait
    C{pause} seconds, promote its standby C{new}, then (with C{rejoin})
    make C{old} a streaming standby of C{new}.

    @param on_promoted: C{None}, or called with the readings so far as soon
        as C{new} is promoted (before the rejoin; from a worker thread, use
        C{reactor.callFromThread}).
    @return: a dict of C{clock()} readings: C{"stopped"} (the old primary
        is down), C{"promote"} (the promotion is requested), C{"promoted"}
        (C{pg_ctl promote} returned) and, with C{rejoin}, C{"rejoined"}.
    """
    times = {}
    old.stop("fast")
    times["stopped"] = clock()
    time.sleep(pause)
    times["promote"] = clock()
    new.promote()
    times["promoted"] = clock()
    if on_promoted is not None:
        on_promoted(dict(times))
    if rejoin:
        old.rejoin_as_standby_of(new)
        times["rejoined"] = clock()
    return times
