"""
A processor that keeps the CPU busy, for C{bench/stalls.py}
(C{--processor tests.support.cpu:BurnsCpu}): how long the reactor goes
without a turn while a backlog is worked through by a synchronous
processor measures the consumer loop, not the processor.
"""

import time

from hermes_tx.components import Component

#: seconds of CPU each event costs
BURN = 0.020


class BurnsCpu(Component):
    """
    Spins for L{BURN} seconds of CPU time per event, synchronously (no
    Deferred), then is done with it.
    """

    def execute(self, event):
        until = time.process_time() + BURN
        while time.process_time() < until:
            pass
        return event
