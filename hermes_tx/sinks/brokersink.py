# -*- test-case-name: tests.test_sink_redis,tests.test_sink_amqp -*-
"""
L{BrokerSink}: what the Redis and RabbitMQ sinks share: an L{OnDemand}
connection, one answer awaited per event (an entry id, a publisher
confirm), a deadline on the whole batch, and per-event outcomes (answered:
done; refused: retried with the broker's reason; unanswered: retried).
"""

from twisted.internet import defer

from hermes_tx.exceptions import one_line
from hermes_tx.outcomes import BatchOutcome, Retry
from hermes_tx.sinks.base import Sink, within
from hermes_tx.sinks.connecting import OnDemand

#: the answer recorded for an event the other side confirmed
CONFIRMED = True


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

    def record(self, result, answers, event):
        """
        Note the answer for C{event}: a success is L{CONFIRMED}; a failure
        is kept (a refusal) unless it is one of L{unanswered}.
        """
        if isinstance(result, defer.Failure):
            if not result.check(*self.unanswered):
                answers[id(event)] = result.value
        else:
            answers[id(event)] = CONFIRMED
        return None

    @defer.inlineCallbacks
    def send(self, events, prepared):
        started = self.clock.seconds()
        answers = {}
        why = self.lost_reason
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
            if not answers:
                self.metrics.observe(self.clock.seconds() - started, failed=True)
                raise Retry(why) from None
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

    def tear_down(self):
        return self.connection.close()
