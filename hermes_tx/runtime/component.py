# -*- test-case-name: tests.test_components,tests.test_supervisor -*-
"""
The lifecycle every component shares (L{BaseComponent}): an
L{twisted.application.service.IService} whose runs (C{set_up}, the work,
C{tear_down}) a L{hermes_tx.runtime.supervisor.Supervisor} owns, restarting
lost ones after a backoff and reporting terminated ones on the error queue.
(Sources add a connection: L{hermes_tx.sources.component}.)
"""

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from hermes_tx import strategies
from hermes_tx.runtime.backoff import Backoff, backoff_policy
from hermes_tx.runtime.supervisor import Supervisor


class BaseComponent(service.Service):
    """
    The lifecycle of a listener or processor: an
    L{twisted.application.service.IService} whose runs a
    L{hermes_tx.runtime.supervisor.Supervisor} owns.

    Subclasses implement L{new_run} and may override L{set_up} and
    L{tear_down} (called at the start and end of every run).

    @ivar supervisor: the L{hermes_tx.runtime.supervisor.Supervisor} of its runs.
    @ivar backoff_limit: the longest backoff in seconds.
    """

    log = Logger()

    def __init__(self, error_strategy=None, error_queue=None, backoff_limit=16, clock=None):
        """
        @param error_strategy: an L{strategies.AbstractErrorStrategy};
            C{None} means L{strategies.CommonErrorStrategy}.
        @param error_queue: where a terminating component reports a
            L{ComponentError}; C{None} lets the Client wire it.
        @param backoff_limit: the longest backoff, in seconds.
        @param clock: an L{twisted.internet.interfaces.IReactorTime} for every
            delay; C{None} means the global reactor.
        """
        self.error_strategy = error_strategy or strategies.CommonErrorStrategy()
        self.error_queue = error_queue
        self.backoff_limit = backoff_limit
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.supervisor = Supervisor(self, clock, Backoff(self._restart_delay), log=self.log)
        self.supervisor.add_observer(_ReportTermination())

    def _restart_delay(self, attempt):
        # Read backoff_limit now: twistd sets it after construction.
        return backoff_policy(initial=0.1, factor=2.0, max_delay=self.backoff_limit)(attempt)

    # -- the seed's extension points ----------------------------------------

    def set_up(self):
        """
        Called when a run starts, before any work.  May return a Deferred.
        """

    def tear_down(self):
        """
        Called when a run ends, after the last work.  May return a Deferred.
        """

    def new_run(self):
        """
        @return: a new run object (see L{hermes_tx.runtime.supervisor.Supervisor}).
        """
        raise NotImplementedError

    # -- the seed's process methods, honestly -------------------------------

    @property
    def ident(self):
        """
        The component's name (its service name, or its class name when
        unnamed).  There is no process: every component runs in the reactor.
        """
        return self.name or type(self).__name__

    def is_alive(self):
        """
        @return: True while the service runs and has not terminated on an
            error.
        """
        return bool(self.running) and self.supervisor.state != "terminated"

    @property
    def terminated(self):
        """
        The L{ComponentError} that terminated the last run, while the
        component is terminated; else C{None}.
        """
        if self.supervisor.state != "terminated":
            return None
        return self.supervisor.last_outcome.report

    def join(self):
        """
        @return: a Deferred that fires when the current run has ended (after
            L{tear_down}); already fired when no run is in progress.  Never
            blocks.
        """
        run = self.supervisor.run
        if run is None:
            return defer.succeed(None)
        return run.when_ended()

    # -- IService -----------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        self.supervisor.start()

    def stopService(self):
        """
        End the current run (see the subclass for how) and stop restarting.

        @return: a Deferred that fires when the run has ended.
        """
        service.Service.stopService(self)
        return self.supervisor.stop()

    #: seconds a stop may take (see L{hermes_tx.runtime.run.Run.stop}); C{None}: no limit
    shutdown_timeout = None

    def terminate(self, report):
        """
        End the current run for good and put C{report} (a L{ComponentError})
        on the error queue, so the Client learns of it.
        """
        run = self.supervisor.run
        if run is not None:
            run.terminate(report)


class _ReportTermination:
    """
    The component's own observer: a terminated run is reported on the
    error queue, as in the seed.
    """

    def run_terminated(self, component, error):
        report = component.supervisor.last_outcome.report
        if component.error_queue is not None and report is not None:
            component.error_queue.put(report)
