"""
A processor in the seed's style: subclass Component, call super().__init__()
with no arguments, handle each event in execute().

Run it with:  twistd -n hermes --dsn ... --channel jobs --processor examples.printer:Printer
"""

from hermes_tx.components import Component


class Printer(Component):
    def __init__(self):
        super().__init__()
        self.seen = 0

    def execute(self, event):
        if event.kind == "notification":
            self.seen += 1
            print(f"#{self.seen} {event.channel}: {event.payload}", flush=True)
        else:
            # "start" or "resync": notifications may have been missed; a real
            # processor re-scans its source of truth here.
            print(f"{event.kind}: catching up", flush=True)
