"""
Processors for the tests of C{twistd hermes} (loaded with
C{--processor tests.support.processors:NAME}).
"""

from twisted.internet import defer, reactor, task

from hermes_tx.components import Component
from hermes_tx.processors import JsonLinesProcessor


class PassThrough(JsonLinesProcessor):
    """
    A processor written the common way: all arguments passed on to the base
    class, and what the base class's C{execute} returns passed on (it may
    be a Deferred).  A payload C{slow:SECONDS} is written and then takes
    that long (to make a stop slow).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

    def execute(self, event):
        written = super().execute(event)  # the event, or a Deferred of it
        payload = getattr(event, "payload", None) or ""
        if not payload.startswith("slow:"):
            return written
        d = written if isinstance(written, defer.Deferred) else defer.succeed(written)
        return d.addCallback(lambda _: task.deferLater(reactor, float(payload[5:]), lambda: event))


class BareKwargs(Component):
    """
    A Component taking C{**kwargs} that only L{Component} knows about.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.given = kwargs

    def execute(self, event):
        return event


class Explicit(Component):
    """
    A Component naming C{output} without taking C{**kwargs}.
    """

    def __init__(self, output):
        super().__init__()
        self.output = output

    def execute(self, event):
        return event


class FailingInit(Component):
    """
    A processor whose constructor raises.
    """

    def __init__(self):
        raise RuntimeError("cannot open the widget")
