# -*- test-case-name: tests.test_machines -*-
"""
L{StateName}: the current state of an Automat machine, readable at any
time.

hermes_tx's lifecycles are Automat state machines (C{TypeMachineBuilder}),
and the rest of the code needs to ask them where they are (is the listener
listening? is the circuit open?), often from code that runs inside one of
their transitions (a callback fired by an output).  Automat has no public
way to read the current state, and an input that returns a value cannot be
given while a transition runs.  Its transitioner can trace transitions,
though: L{StateName} registers a tracer and keeps the name of the state the
machine is in (set before the transition's outputs run), so reading it
never enters the machine.  This is the one place that reaches into
Automat's machine object.
"""


class StateName:
    """
    @ivar name: the name of the machine's current state (as given to
        C{builder.state(name)}).
    """

    def __init__(self, machine, initial):
        """
        @param machine: an instance made by a built C{TypeMachine}.
        @param initial: the name of its initial state (the first state its
            builder defined).
        """
        self.name = initial
        machine.__automat_transitioner__.setTrace(self._traced)

    def _traced(self, old, input, new):
        self.name = new.name
        return None
