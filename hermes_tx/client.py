# -*- test-case-name: tests.test_client,tests.test_failover -*-
"""
L{Client}: the Hermes client as a Twisted
L{MultiService <twisted.application.service.MultiService>}.  Its listener and
processor are child services, started only while the server is the primary.

What makes the Client check the server's role (C{pg_is_in_recovery()}, on
every host of the DSN at once): start-up; a timer (every
C{role_check_interval} seconds while some host answers, backing off while
none does); a change of a failover file under C{watch_path}; and a
component losing its connection.  A L{hermes_tx.failover.monitor.RoleMonitor} owns
that schedule; each component's L{hermes_tx.runtime.supervisor.Supervisor} owns
its restarts.
"""

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from hermes_tx.connectors import PostgresConnector
from hermes_tx.failover.files import (
    DEFAULT_FAILOVER_FILES,
    RECREATED,
    FailoverFileWatcher,
    FileEventWindow,
)
from hermes_tx.failover.log import RoleLog
from hermes_tx.failover.monitor import RoleMonitor
from hermes_tx.failover.roles import PRIMARY, UNKNOWN, HostProbe, check_roles
from hermes_tx.postgres import dsn as dsnlib
from hermes_tx.postgres.hosts import HostEntry, join_hosts, split_hosts
from hermes_tx.runtime.backoff import Backoff, backoff_policy
from hermes_tx.runtime.gate import ComponentGate


#: role checks in a row that must find no host before components running on
#: the primary are stopped (one check that times out never stops them)
UNANSWERED_CHECKS = 2


class Client(ComponentGate):
    """
    Keeps one listener and one processor running while the server is the
    primary, and stopped while it is a standby or cannot be reached.

    With a multi-host DSN the Client asks every host and follows the one
    that is the primary: components connect to that host, and a Client
    whose hosts are all standbys keeps looking until one is promoted.

    The Client wires the sources' queue to the processor's pipe and every
    component to its error queue (unless they were given their own; see
    L{hermes_tx.runtime.gate.ComponentGate}).  Put it in any
    L{service.MultiService} with C{setServiceParent}.

    @ivar role: C{"primary"}, C{"standby"} or C{"unknown"} (not yet known, or
        no host can be reached).
    @ivar primary_host: the L{hermes_tx.postgres.hosts.HostEntry} found to be the
        primary, or C{None}.
    @ivar queue: the queue between the sources and the processor (the
        seed's C{notification_queue}).
    @ivar error_queue: where components report L{ComponentError}s.
    @ivar listener: the listener component, or C{None}.
    @ivar outbox: the outbox consumer component, or C{None}.
    @ivar processor: the processor component, or C{None}.
    """

    log = Logger()

    def __init__(
        self,
        dsn,
        watch_path=None,
        failover_files=None,
        role_check_interval=1.0,
        max_backoff=2.0,
        role_check_timeout=5.0,
        clock=None,
        connector=None,
        queue_size=10000,
        connector_factory=None,
        failover_interval=0.25,
        failover_window=60.0,
    ):
        """
        @param dsn: the server's DSN (dict, C{key=value} string or URI),
            multi-host ones included.
        @param watch_path: C{None}, or the server's data directory, watched
            (not recursively) for changes of failover files, and re-armed
            when the directory is deleted and made again.
        @param failover_files: file names under C{watch_path} whose changes
            mean a role change; C{None} means C{recovery.conf},
            C{recovery.done}, C{standby.signal}, C{recovery.signal},
            C{promote}.
        @param role_check_interval: seconds between role checks while some
            host answers.
        @param max_backoff: the longest wait, in seconds, between role
            checks while no host answers (0.1, 0.15, 0.225 ... with jitter).
        @param role_check_timeout: seconds one attempt of a role check may
            take before its connection is declared dead (an attempt on a
            kept connection that fails is made once more on a fresh one, so
            a hung host may take twice this).
        @param clock: an C{IReactorTime}; C{None} means the reactor.
        @param connector: C{None}, or one connector (anything with
            C{is_server_master()}, C{is_connected} and C{disconnect()}) to
            ask the role through, whatever the DSN's hosts.
        @param queue_size: how many events may wait for the processor before
            the listener stops reading (back-pressure; C{None}: no bound).
        @param connector_factory: C{None}, or a callable taking the libpq
            keywords of one host (a dict) and returning the connector that
            asks that host its role (default: a L{PostgresConnector} with
            application_name C{hermes-role}).
        @param failover_interval: for C{failover_window} seconds after the
            primary was last seen, check at least this often (seconds), so
            a promotion is found quickly; C{None}: only
            C{role_check_interval}.
        @param failover_window: see C{failover_interval}.
        @raise InvalidConfigurationException: the DSN does not parse.
        """
        ComponentGate.__init__(self, queue_size=queue_size)
        params = dsnlib.parse(dsn)
        if clock is None:
            from twisted.internet import reactor as clock
        self.dsn = dsn
        self.watch_path = watch_path
        self.failover_files = tuple(failover_files or DEFAULT_FAILOVER_FILES)
        self.role_check_interval = role_check_interval
        self.max_backoff = max_backoff
        self.role_check_timeout = role_check_timeout
        self.clock = clock
        # With one connector given, libpq picks the host: which one is the
        # primary is not known, so components are not pinned to it.
        self._pins_hosts = connector is None
        self.probes = self._make_probes(params, connector, connector_factory)
        self.role = UNKNOWN
        self.primary_host = None
        self.monitor = RoleMonitor(
            clock, self._check_roles, self._apply, role_check_interval,
            Backoff(backoff_policy(initial=0.1, factor=1.5, max_delay=max_backoff)),
            log=self.log, failover_interval=failover_interval, failover_window=failover_window,
        )
        secrets = dsnlib.secrets(dsn)
        self._role_log = RoleLog(self.log, clock, multi_host=len(self.probes) > 1,
                                 scrub=lambda text: dsnlib.scrub(text, secrets))
        self._window = None
        self._watcher = None
        self._file_logged_at = None  # when a failover-file event was last logged
        self._unanswered = 0  # role checks in a row that found no host, while primary

    def _make_probes(self, params, connector, factory):
        if connector is not None:
            entry = (getattr(connector, "hosts", None) or [HostEntry("", "", "")])[0]
            return [HostProbe(entry, connector, self.clock, self.role_check_timeout)]
        if factory is None:
            def factory(host_params):
                return PostgresConnector(host_params, application_name="hermes-role")
        probes = []
        for entry in split_hosts(params):
            host_params = join_hosts(params, [entry])
            host_params.pop("target_session_attrs", None)
            probes.append(HostProbe(entry, factory(host_params), self.clock, self.role_check_timeout))
        return probes

    def __repr__(self):
        return f"<Client {dsnlib.redact(self.dsn)!r} role={self.role}>"

    @property
    def is_open(self):
        """
        Components run while the Client runs and the server is the primary.
        """
        return bool(self.running) and self.role == PRIMARY

    def _wired(self, component):
        if self.primary_host is not None and self._pins_hosts:
            self._follow(component, self.primary_host)

    # -- IService -----------------------------------------------------------

    def startService(self):
        # Not MultiService.startService: the components start only once the
        # server is known to be the primary.
        service.Service.startService(self)
        self._start_gate()
        if self.watch_path is not None:
            self._watcher = FailoverFileWatcher(
                self.watch_path, self._failover_file_changed, self.failover_files
            )
            self._watcher.start()
        self.monitor.start()

    def stopService(self):
        """
        Stop role checks, the file watcher and the components.

        @return: a Deferred firing when all of them have stopped.
        """
        service.Service.stopService(self)
        self.monitor.stop()
        if self._window is not None:
            self._window.close()
            self._window = None
        waits = [self._stop_gate()]
        if self._watcher is not None:
            waits.append(self._watcher.stop())
            self._watcher = None
        for probe in self.probes:
            probe.close()
        self.role = UNKNOWN  # nobody is looking any more
        self.primary_host = None
        self._unanswered = 0
        self._role_log.reset()
        return defer.gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)

    # -- role checks --------------------------------------------------------

    def execute_role_based_procedure(self):
        """
        Ask the server its role and start the components on a primary, stop
        them on a standby or when the server cannot be reached.

        @return: a Deferred firing with the role found (C{"primary"},
            C{"standby"} or C{"unknown"}) once components are started or
            stopped accordingly.  Checks do not overlap: asking during a
            check makes one more check follow it, and the answer is that
            follow-up check's.
        """
        return self.monitor.check_now().addCallback(lambda result: result.role)

    def _check_roles(self):
        return check_roles(self.probes, prefer=self.primary_host,
                           on_status=self._host_status)

    def _host_status(self, status):
        if self.running:
            self._role_log.host_status(status)

    def _apply(self, result):
        if not self.running:
            return
        old = self.role
        if result.role == UNKNOWN and old == PRIMARY:
            # No host answered while the components work on the primary: a
            # check that timed out (a busy host, a slow network) is not a
            # change of role.  Only a second check in a row that finds no
            # host stops them (the next comes within failover_interval).
            self._unanswered += 1
            if self._unanswered < UNANSWERED_CHECKS:
                return
        self._unanswered = 0
        self._role_log.record(old, result)
        self.role = result.role
        if result.role == PRIMARY:
            if self._pins_hosts and result.primary != self.primary_host:
                self.primary_host = result.primary
                for component in self:
                    self._follow(component, result.primary)
            self._start_components()
        else:
            self._stop_components().addErrback(
                lambda f: self.log.failure("stopping the components failed", f))

    def _follow(self, component, entry):
        follow = getattr(component, "follow_primary", None)
        if follow is not None:
            follow(entry)

    # -- failover files -----------------------------------------------------

    def _failover_file_changed(self, event_type, name):
        """
        A failover file changed (or the watched directory was made again):
        check the role now and, for a moment, again and again until it
        changes (L{FileEventWindow}).
        """
        if not self.running:
            return
        if self._window is not None and self._window.open:
            self._window.extend()
            return
        # A burst of file events while nothing answers opens (and at once
        # closes) a window per event: say so once a second at most.
        now = self.clock.seconds()
        if event_type == RECREATED:
            self.log.info("data directory {name} made again", name=name)
        elif self._file_logged_at is None or now - self._file_logged_at >= 1.0:
            self._file_logged_at = now
            self.log.info("failover file {name} {event}", name=name, event=event_type)
        self._window = FileEventWindow(self.clock, self.monitor.check_now, self.role)
        self._window.start()

    # -- what the components' supervisors tell us ----------------------------

    def run_lost(self, component, error, delay):
        # A component lost its connection: the server may have gone, or
        # changed role.  Check now.
        if self.running:
            self.monitor.check_now()
