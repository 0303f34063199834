"""
An error strategy of your own: like the default one, except that a bug in
the processor (an exception that is not about the database) stops it
instead of skipping the event.  Under C{twistd hermes} a stopped processor
stops the service with exit status 1, so that its supervisor (systemd, say)
restarts it and someone notices.

    twistd -n hermes --dsn "$HERMES_DSN" --channel orders --processor examples.strategy:Orders
"""

import json

from hermes_tx.components import Component
from hermes_tx.strategies import TERMINATE, CommonErrorStrategy


class FailFast(CommonErrorStrategy):
    """
    L{CommonErrorStrategy}, but unexpected errors terminate.
    """

    def handle_exception(self, error):
        expected, action = super().handle_exception(error)
        if not expected:
            action = TERMINATE
        return expected, action


class Orders(Component):
    """
    Every notification's payload must be a JSON object with an C{"id"}:
    anything else is a bug upstream, and stops the processor.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("error_strategy", FailFast())
        super().__init__(**kwargs)
        self.seen = []

    def execute(self, event):
        if event.kind == "notification":
            self.seen.append(json.loads(event.payload)["id"])
