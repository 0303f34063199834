# -*- test-case-name: tests.test_pgcluster -*-
"""
Class-level fixtures for trial: trial (Twisted 26) never calls
C{setUpClass}/C{tearDownClass}, so L{ClassFixtures} does it.
"""

import atexit

_active = []  # [class whose setUpClass ran and whose tearDownClass is due]


def _finish_active():
    """Run the pending C{tearDownClass}, if any."""
    if _active:
        cls = _active.pop()
        cls._class_fixture_state = None
        cls.tearDownClass()


atexit.register(_finish_active)


class ClassFixtures(object):
    """
    Mixin (put it before C{TestCase}) giving trial test cases C{setUpClass}
    and C{tearDownClass}.

    C{setUpClass} runs before the class's first test.  C{tearDownClass} runs
    after the last of its test methods (or, if only some were selected,
    when a test of another class starts, or at interpreter exit).  If
    C{setUpClass} raises, every test of the class errors with that exception
    and C{tearDownClass} is not called, as in the standard library:
    C{setUpClass} must clean up after itself.  Subclasses overriding C{setUp}
    must call C{super().setUp()}.
    """

    _class_fixture_state = None

    def setUp(self):
        cls = type(self)
        if _active and _active[0] is not cls:
            _finish_active()
        state = cls.__dict__.get("_class_fixture_state")
        if state is None:
            names = {n for n in dir(cls)
                     if n.startswith("test") and callable(getattr(cls, n))}
            state = cls._class_fixture_state = {"todo": names, "error": None}
            try:
                cls.setUpClass()
            except BaseException as e:
                state["error"] = e
            else:
                _active.append(cls)
        state["todo"].discard(self._testMethodName)
        if state["error"] is not None:
            if not state["todo"]:
                cls._class_fixture_state = None
            raise state["error"]
        self.addCleanup(self._class_test_done, state)
        return super().setUp()

    def _class_test_done(self, state):
        """Cleanup of each test: tear the class down after its last test."""
        if not state["todo"] and _active and _active[0] is type(self):
            _finish_active()


class PrimaryStandbyFixtures(ClassFixtures):
    """
    A throwaway primary (C{cls.primary}) and a streaming standby of it
    (C{cls.standby}) for the whole test class.
    """

    @classmethod
    def setUpClass(cls):
        from tests.support.pgcluster import Cluster

        cls.primary = Cluster.create_primary()
        try:
            cls.standby = cls.primary.create_standby()
        except BaseException:
            cls.primary.destroy()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.standby.destroy()
        cls.primary.destroy()
