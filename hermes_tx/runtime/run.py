# -*- test-case-name: tests.test_components -*-
"""
Runs: one life of a component between C{set_up} and C{tear_down}, owned by
its L{hermes_tx.runtime.supervisor.Supervisor}.

  - L{Run}: the shape every run has: C{set_up}, the work, C{tear_down},
    then C{on_end(outcome)}; a stop bounded by the component's
    C{shutdown_timeout}; a termination.
  - L{ConsumerRun}: a L{hermes_tx.components.Component}'s run: its
    L{hermes_tx.runtime.loop.ConsumerLoop} until stopped or terminated.

A source's run (one connection) is L{hermes_tx.sources.run.ConnectionRun}.
"""

import psycopg2
from twisted.internet import defer

from hermes_tx import strategies
from hermes_tx.exceptions import HermesException, one_line
from hermes_tx.runtime.loop import ConsumerLoop
from hermes_tx.runtime.supervisor import STOPPED, TERMINATED, ComponentError, Outcome


class Run:
    """
    One run: C{set_up}, the work, C{tear_down}, then C{on_end(outcome)}.
    Subclasses implement L{_work} and L{_end_work}.

    @ivar on_ready: set by the supervisor; call once the work is under way.
    @ivar on_end: set by the supervisor; called once with the L{Outcome}.
    """

    def __init__(self, component):
        self.component = component
        self.on_ready = lambda: None
        self.on_end = lambda outcome: None
        self._ended = defer.Deferred()
        self._setting_up = True
        self._stop_requested = False
        self._early_end = None  # an Outcome decided while set_up ran
        self._tearing_down = False

    def when_ended(self):
        d = defer.Deferred()
        self._ended.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    def start(self):
        d = defer.maybeDeferred(self.component.set_up)
        d.addCallbacks(self._set_up_done, self._set_up_failed)

    def _set_up_done(self, _):
        self._setting_up = False
        if self._early_end is not None:
            self.end(self._early_end)
        elif self._stop_requested:
            self.end(Outcome(STOPPED))
        else:
            self._work()

    def _set_up_failed(self, failure):
        # set_up raised: that ends this run; reported like a TERMINATE.  An
        # environment's or a database's refusal is one line; a bug gets its
        # traceback.
        self._setting_up = False
        component = self.component
        if failure.check(OSError, psycopg2.Error, HermesException):
            component.log.error("{ident}: set_up failed: {error}", ident=component.ident,
                                error=one_line(failure.value))
        else:
            component.log.failure("{ident}: set_up failed", failure=failure, ident=component.ident)
        report = ComponentError(False, strategies.TERMINATE, component, failure.value)
        self.end(Outcome(TERMINATED, failure.value, report), tear_down=False)

    def stop(self):
        """
        End the run on request (the subclass decides how fast), within the
        component's C{shutdown_timeout} if it has one: past it, the run is
        over whatever is still pending (the item in progress, a slow
        C{tear_down}), and nothing pending can touch a later run.
        """
        self._stop_requested = True
        timeout = getattr(self.component, "shutdown_timeout", None)
        if timeout is not None and not self._ended.called:
            timer = self.component.clock.callLater(timeout, self._give_up)
            self._ended.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        if not self._setting_up and not self._tearing_down:
            self._end_work()

    def _give_up(self):
        component = self.component
        if not self._tearing_down:
            component.log.warn(
                "{ident}: the item in progress did not finish within {t:g} s; stopping anyway",
                ident=component.ident, t=component.shutdown_timeout,
            )
            self.end(Outcome(STOPPED))
        if not self._ended.called:
            component.log.warn(
                "{ident}: tear_down did not finish within {t:g} s; stopped anyway",
                ident=component.ident, t=component.shutdown_timeout,
            )
            self._report(Outcome(STOPPED))

    def terminate(self, report):
        """
        End the run for good with C{report}.
        """
        if self._setting_up:
            self._early_end = Outcome(TERMINATED, report.error, report)
        elif not self._tearing_down:
            self._terminate_work(report)

    def _work(self):
        raise NotImplementedError

    def _end_work(self):
        raise NotImplementedError

    def _terminate_work(self, report):
        self.end(Outcome(TERMINATED, report.error, report))

    def end(self, outcome, tear_down=True):
        """
        Finish the run: C{tear_down}, then report C{outcome}.  Only the
        first call counts.
        """
        if self._tearing_down:
            return
        self._tearing_down = True
        component = self.component
        d = defer.maybeDeferred(component.tear_down) if tear_down else defer.succeed(None)
        d.addErrback(
            lambda f: component.log.failure(
                "{ident}: tear_down failed", failure=f, ident=component.ident
            )
        )
        d.addBoth(lambda _: self._report(outcome))

    def _report(self, outcome):
        if self._ended.called:
            return  # given up on already: this end is nobody's news
        self._ended.callback(outcome)
        self.on_end(outcome)


class ConsumerRun(Run):
    """
    A run of a L{Component}: its L{ConsumerLoop} until stopped (the item in
    progress may take up to C{shutdown_timeout} seconds) or terminated.
    """

    loop = None

    def _work(self):
        component = self.component
        self.loop = ConsumerLoop(component, component.clock)
        self.on_ready()
        d = self.loop.run(*component.chain_defaults)
        d.addErrback(
            lambda f: component.log.failure("{ident}: consumer loop failed", failure=f,
                                            ident=component.ident)
        )
        d.addBoth(lambda _: self._loop_ended())

    def _loop_ended(self):
        # A new run starts with a closed circuit: what failed before a stop
        # (a standby period, a shutdown) is old news.
        self.component.breaker.reset()
        report = self.loop.report
        if report is not None:
            self.end(Outcome(TERMINATED, report.error, report))
        else:
            self.end(Outcome(STOPPED))

    def _end_work(self):
        self.loop.stop()

    def _terminate_work(self, report):
        self.loop.terminate(report)

