# -*- test-case-name: tests.test_sink_redis,tests.test_sink_amqp -*-
"""
L{BrokerSink}: what the Redis and RabbitMQ sinks share: an L{OnDemand}
connection, one answer awaited per event (an entry id, a publisher
confirm), a deadline on the whole batch, and per-event outcomes (answered:
done; refused: retried with the broker's reason; unanswered: retried).

A batch of which no event was confirmed fails as a whole (L{Retry}, one
line) when nothing was answered at all (no connection, a connection lost,
a channel the broker closed: its reason is the line) or when the broker
refused our credentials or rights (L{BrokerSink.systemic}).  The
connection is also made when the sink's run starts and when its circuit
breaker probes with nothing pending (L{BrokerSink.check}), so credentials
refused are known (C{/ready} 503) before any event fails.
"""

from twisted.internet import defer

from hermes_tx.exceptions import one_line
from hermes_tx.outcomes import BatchOutcome, Retry
from hermes_tx.sinks.base import Sink, within
from hermes_tx.sinks.connecting import OnDemand

#: the answer recorded for an event the other side confirmed
CONFIRMED = True
#: the key under which L{BrokerSink.record} keeps the first failure that
#: meant no answer came (a channel the broker closed, with its reason)
LOST = "lost"


class BrokerSink(Sink):
    """
    Subclasses implement C{_connect} (for L{OnDemand}), L{publish} and
    L{refusal}, and pass C{alive}/C{abort} for their connections.

    @ivar connection: the L{OnDemand} connection.
    """

    #: why unanswered events are retried after the connection was lost
    lost_reason = "the connection was lost before the answer"
    #: what a batch waits for, in the timeout's message
    awaited = "answer"
    #: failures of one event's answer that mean no answer came (the
    #: connection was lost): the event is retried with L{lost_reason}
    unanswered = (defer.CancelledError,)

    def __init__(self, target, secrets, alive, abort, **sink_kwargs):
        Sink.__init__(self, target, secrets, **sink_kwargs)
        self.connection = OnDemand(self._connect, alive, abort, self.clock, self.timeout, target)

    def publish(self, connection, events, prepared, answers):
        """
        Send C{events} on C{connection}; add L{record} to the Deferred of
        each event's answer: C{d.addBoth(self.record, answers, event)}.

        @return: a Deferred firing once every event was answered or the
            connection lost.
        """
        raise NotImplementedError

    def refusal(self, error):
        """
        @return: the reason for retrying an event the other side refused
            with C{error}.
        """
        return f"refused: {one_line(error)}"

    def systemic(self, error):
        """
        @return: C{None} when the refusal C{error} is about its event; or
            one line saying why no event can be sent now (our credentials
            or rights refused): then a batch of which no event was
            confirmed fails as a whole with it.
        """
        return None

    def lost_because(self, error):
        """
        @return: why the events were not answered, given the first failure
            of L{unanswered} (default: L{lost_reason}).
        """
        return self.lost_reason

    def record(self, result, answers, event):
        """
        Note the answer for C{event}: a success is L{CONFIRMED}; a failure
        is kept (a refusal) unless it is one of L{unanswered} (the first of
        those is kept under L{LOST}).
        """
        if isinstance(result, defer.Failure):
            if not result.check(*self.unanswered):
                answers[id(event)] = result.value
            else:
                answers.setdefault(LOST, result.value)
        else:
            answers[id(event)] = CONFIRMED
        return None

    @defer.inlineCallbacks
    def send(self, events, prepared):
        started = self.clock.seconds()
        answers = {}
        why = None
        try:
            connection = yield self.connection.get()
            yield within(self.publish(connection, events, prepared, answers), self.timeout,
                         self.clock)
        except Exception as e:
            if isinstance(e, defer.TimeoutError):
                self.connection.drop()
                why = f"no {self.awaited} within {self.timeout:g} s"
            else:
                why = str(e) if isinstance(e, Retry) else one_line(e)
        lost = answers.pop(LOST, None)
        if why is None:
            why = self.lost_because(lost) if lost is not None else self.lost_reason
        refusals = [a for a in answers.values() if a is not CONFIRMED]
        systemic = [line for line in map(self.systemic, refusals) if line]
        if not answers or (systemic and len(refusals) == len(answers)):
            # Nothing answered, or nothing confirmed for a reason that is
            # not the events': the batch failed as a whole.
            self.metrics.observe(self.clock.seconds() - started, failed=True)
            raise Retry(systemic[0] if systemic else why)
        outcome = BatchOutcome()
        for e in events:
            answer = answers.get(id(e))
            if answer is None:
                outcome.retry_event(e, why)
            elif answer is not CONFIRMED:
                outcome.retry_event(e, self.refusal(answer))
        self.metrics.observe(self.clock.seconds() - started,
                             failed=len(answers) < len(events))
        return outcome if outcome.retry else None

    def check(self):
        """
        Connect now (authentication included), or fail with the one line
        saying why not (L{hermes_tx.sinks.check}); the connection is kept
        for the next batch.
        """
        return self.connection.get()

    def tear_down(self):
        Sink.tear_down(self)
        return self.connection.close()
