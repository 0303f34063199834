"""
Tests for L{hermes_tx.runtime.machines.StateName}: the state of an Automat
machine, readable at any time, also from code that runs inside one of its
transitions (where asking the machine itself is not allowed).
"""

from dataclasses import dataclass, field
from typing import Any, List, Protocol

from automat import NoTransition, TypeMachineBuilder
from twisted.trial import unittest

from hermes_tx.runtime.machines import StateName


class _Inputs(Protocol):
    def go(self) -> None:
        "Move on."

    def back(self) -> None:
        "Move back."

    def chain(self) -> None:
        "Move on, and on again once this transition is over."


@dataclass
class _Core:
    seen: List[Any] = field(default_factory=list)  # what the outputs saw
    reader: Any = None  # reads the state name, set by the test


def _build():
    builder = TypeMachineBuilder(_Inputs, _Core)
    first = builder.state("First")
    second = builder.state("Second")
    third = builder.state("Third")

    @first.upon(_Inputs.go).to(second)
    @second.upon(_Inputs.go).to(third)
    def moved(inputs, core):
        core.seen.append(("go", core.reader()))

    @third.upon(_Inputs.back).to(second)
    def moved_back(inputs, core):
        core.seen.append(("back", core.reader()))

    @first.upon(_Inputs.chain).to(second)
    def chained(inputs, core):
        inputs.go()  # queued by Automat: runs once this transition is over
        core.seen.append(("chain", core.reader()))

    return builder.build()


_Machine = _build()


class StateNameTests(unittest.TestCase):
    def make(self):
        core = _Core()
        machine = _Machine(core)
        name = StateName(machine, "First")
        core.reader = lambda: name.name
        return machine, name, core

    def test_initial(self):
        machine, name, core = self.make()
        self.assertEqual(name.name, "First")

    def test_follows_transitions(self):
        machine, name, core = self.make()
        machine.go()
        self.assertEqual(name.name, "Second")
        machine.go()
        self.assertEqual(name.name, "Third")
        machine.back()
        self.assertEqual(name.name, "Second")

    def test_outputs_see_the_new_state(self):
        """
        An output (and whatever it calls) reads the state the transition
        leads to.
        """
        machine, name, core = self.make()
        machine.go()
        machine.go()
        machine.back()
        self.assertEqual(core.seen, [("go", "Second"), ("go", "Third"), ("back", "Second")])

    def test_queued_input_runs_after(self):
        """
        An input given inside a transition runs once it is over: the output
        that gave it still reads its own transition's state.
        """
        machine, name, core = self.make()
        machine.chain()
        self.assertEqual(core.seen, [("chain", "Second"), ("go", "Third")])
        self.assertEqual(name.name, "Third")

    def test_refused_input_changes_nothing(self):
        """
        An input the state has no transition for is refused, and the name
        stays.
        """
        machine, name, core = self.make()
        self.assertRaises(NoTransition, machine.back)
        self.assertEqual(name.name, "First")
        self.assertEqual(core.seen, [])

    def test_machines_are_apart(self):
        one, one_name, _ = self.make()
        two, two_name, _ = self.make()
        one.go()
        self.assertEqual((one_name.name, two_name.name), ("Second", "First"))
