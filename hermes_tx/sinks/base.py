# -*- test-case-name: tests.test_sink_http,tests.test_sink_webhook -*-
"""
L{Sink}: what every built-in sink shares.

A sink is a batch processor: C{execute} gets a list of events (changes or
notifications), sends the ones that go somewhere (L{records.deliverable}:
C{start} and C{resync} events are done at once), and answers with the
outcomes of L{hermes_tx.outcomes}: a Deferred that fires with C{None}
(all confirmed), a L{BatchOutcome} (per-event answers), or fails with
L{Retry} or L{Reject} for the whole batch.  Every reason text is scrubbed
of the sink's secrets before it leaves, and every request is counted in
the sink's L{SinkMetrics}.
"""

from twisted.internet import defer

from hermes_tx.components import Component
from hermes_tx.exceptions import HermesException, one_line
from hermes_tx.outcomes import BatchOutcome, Reject, Retry, Unavailable
from hermes_tx.sinks.check import SinkCheck
from hermes_tx.sinks.metrics import SinkMetrics
from hermes_tx.sinks.records import deliverable
from hermes_tx.sinks.urls import Secrets


class SinkError(HermesException):
    """
    An unexpected error of a sink (neither L{Retry} nor L{Reject}: a bug)
    whose message held a secret, with the message scrubbed.  It goes to the
    component's error strategy.  (Failing to connect, an exchange declared
    with another type included, is a L{Retry}.)
    """


class Unsendable(HermesException):
    """
    Raised by L{Sink.prepare}: this event can never be sent (it is
    rejected on its own; the rest of the batch is sent).
    """


class Sink(Component):
    """
    The base of the built-in sinks.  Subclasses set L{kind} and
    L{default_max_batch} and implement L{prepare} and L{send}.

    @ivar metrics: the sink's L{SinkMetrics}.
    @ivar target: the sink's URL, redacted (safe to show).
    @ivar timeout: seconds a request may take, all included, before it is
        given up on (and its events retried).
    """

    #: the sink kind, the C{sink} label of its metrics
    kind = "sink"
    #: the batch size when the caller gives none
    default_max_batch = 100

    def __init__(self, target, secrets=None, timeout=30.0, max_batch=None, name=None,
                 **component_kwargs):
        """
        @param target: the redacted URL (shown in logs, metrics and C{repr}).
        @param secrets: a L{Secrets} to scrub from every error text.
        @param timeout: seconds for one request, all included.
        @param max_batch: the largest batch (default L{default_max_batch}).
        @param name: the service name (default: the class name).
        @param component_kwargs: passed to L{Component} (C{clock},
            C{error_strategy}, C{backoff_limit}, ...).
        """
        if max_batch is None:
            max_batch = self.default_max_batch
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError("max_batch must be a positive integer")
        if not timeout or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        Component.__init__(self, max_batch=max_batch, **component_kwargs)
        if name is not None:
            self.setName(name)
        self.target = target
        self.secrets = secrets if secrets is not None else Secrets()
        self.timeout = float(timeout)
        self.metrics = SinkMetrics(self.kind, target)
        self.checking = SinkCheck(self)

    def set_up(self):
        """
        The run starts: L{check} the other side now, without waiting for
        it (L{hermes_tx.sinks.check}: a sink that cannot connect, or whose
        credentials are refused, opens its circuit at once).
        """
        self.checking.start()

    def tear_down(self):
        """
        The run ends: no more checks.
        """
        self.checking.stop()

    def check(self):
        """
        Find out, without an event, whether the other side takes events
        now (connect and authenticate).  Subclasses may implement it; by
        default there is nothing to check.

        @return: C{None} (nothing to check), or a Deferred that fails with
            an exception whose text is one line (L{Retry}) when it does not.
        """
        return None

    def __repr__(self):
        return f"<{type(self).__name__} {self.target}>"

    def execute(self, batch):
        """
        Send C{batch} (a list of events; a single event is taken as a batch
        of one, and then per-event outcomes are raised as L{Retry} or
        L{Reject}).

        @return: a Deferred firing with C{None} or a L{BatchOutcome}, or
            failing with L{Retry}, L{Reject} or L{SinkError}.
        """
        single = not isinstance(batch, list)
        events = deliverable([batch] if single else batch)
        if not events:
            return defer.succeed(None)
        skipped, prepared = BatchOutcome(), {}
        for e in events:
            try:
                prepared[id(e)] = self.prepare(e)
            except Unsendable as why:
                skipped.reject_event(e, str(why))
            except Exception as why:
                # This event only (a payload nested too deep to decode...):
                # the others of the batch go on.
                skipped.reject_event(e, self.secrets.scrub(f"cannot be sent: {one_line(why)}"))
        sendable = [e for e in events if id(e) in prepared]
        if sendable:
            d = defer.maybeDeferred(self.send, sendable, prepared)
        else:
            d = defer.succeed(None)
        if skipped.rejected:
            d.addErrback(lambda f: whole(sendable, f.trap(Retry, Reject) and f.value))
            d.addCallback(lambda outcome: merge(skipped, outcome))
        d.addCallbacks(self._sent, self._failed, callbackArgs=(events,), errbackArgs=(events,))
        if single:
            d.addCallback(_raise_single)
        return d

    def prepare(self, event):
        """
        Encode one event for the wire.  Subclasses implement it.

        @return: what L{send} gets for it.
        @raise Unsendable: it can never be sent (not strict JSON, nothing
            to index).
        """
        raise NotImplementedError("Sink subclasses MUST implement prepare")

    def send(self, events, prepared):
        """
        Send C{events} (changes and notifications only, never empty).
        Subclasses implement it.

        @param prepared: a dict from C{id(event)} to what L{prepare}
            returned for it.

        @return: C{None} or a L{BatchOutcome}, or a Deferred of one; or
            raise (fail with) L{Retry} or L{Reject} for all of them.
        """
        raise NotImplementedError("Sink subclasses MUST implement send")

    def _sent(self, outcome, events):
        if outcome is None:
            self.metrics.count_events(sent=len(events))
            return None
        scrub = self.secrets.scrub
        outcome.retry = [(e, scrub(reason), after) for e, reason, after in outcome.retry]
        outcome.rejected = [(e, scrub(reason)) for e, reason in outcome.rejected]
        self.metrics.count_events(sent=len(outcome.done(events)), retried=len(outcome.retry),
                                  rejected=len(outcome.rejected))
        return outcome if outcome.retry or outcome.rejected else None

    def _failed(self, failure, events):
        error = failure.value
        scrub = self.secrets.scrub
        if isinstance(error, Retry):
            # The batch failed as a whole: the other side, not its events.
            self.metrics.count_events(retried=len(events))
            raise Unavailable(scrub(error), error.retry_after)
        if isinstance(error, Reject):
            self.metrics.count_events(rejected=len(events))
            raise Reject(scrub(error))
        # The whole message, not only its first line, may hold a secret
        # (the error strategy logs it with its traceback).
        text = str(error)
        if scrub(text) != text:
            raise SinkError(scrub(one_line(error)))
        return failure


def _raise_single(outcome):
    """
    For a single event: turn a L{BatchOutcome} into L{Retry} or L{Reject}.
    """
    if outcome is not None:
        for _, reason, after in outcome.retry:
            raise Retry(reason, after)
        for _, reason in outcome.rejected:
            raise Reject(reason)
    return None


def whole(events, error):
    """
    @return: a L{BatchOutcome} giving every one of C{events} the outcome of
        C{error} (a L{Retry} or a L{Reject}).
    """
    outcome = BatchOutcome()
    for e in events:
        if isinstance(error, Retry):
            outcome.retry_event(e, str(error), error.retry_after)
        else:
            outcome.reject_event(e, str(error))
    return outcome


def merge(into, outcome):
    """
    Add the answers of C{outcome} (a L{BatchOutcome} or C{None}) to C{into}.
    """
    if outcome is not None:
        into.retry.extend(outcome.retry)
        into.rejected.extend(outcome.rejected)
    return into


def within(d, seconds, clock):
    """
    Cancel C{d} after C{seconds} on C{clock}; it then fails with
    C{defer.TimeoutError} whatever the cancelled work ended with (a
    request's C{ResponseNeverReceived}, a pipeline's partial answers).

    @return: C{d}.
    """
    return d.addTimeout(seconds, clock, onTimeoutCancel=_timed_out)


def _timed_out(result, timeout):
    raise defer.TimeoutError(timeout, "deadline")
