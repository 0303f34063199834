"""
Tests for L{hermes_tx.failover.monitor.RoleMonitor}, in memory: role checks are
Deferreds the tests fire, time is a L{task.Clock}.
"""

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.trial import unittest

from hermes_tx.runtime.backoff import Backoff, backoff_policy
from hermes_tx.postgres.hosts import HostEntry
from hermes_tx.failover.monitor import RoleMonitor
from hermes_tx.failover.roles import PRIMARY, STANDBY, UNKNOWN, HostStatus, RoleResult

HOST = HostEntry("db", "", "5432")
INTERVAL = 10


def result(role):
    if role == UNKNOWN:
        return RoleResult(UNKNOWN, None, (HostStatus(HOST, UNKNOWN, "OperationalError: refused"),))
    return RoleResult(role, HOST if role == PRIMARY else None, (HostStatus(HOST, role, None),))


class RoleMonitorTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.checks = []  # the Deferred of every check run, in order
        self.applied = []
        self.logged = []
        self.backoff = Backoff(backoff_policy(initial=1, factor=2, max_delay=8, jitter=None))
        self.monitor = self.make()

    def make(self, run_check=None, apply=None):
        return RoleMonitor(
            self.clock, run_check or self.run_check, apply or self.applied.append, INTERVAL,
            self.backoff, log=Logger(observer=self.logged.append),
        )

    def run_check(self):
        d = defer.Deferred()
        self.checks.append(d)
        return d

    def answer(self, role):
        """
        Fire the check in flight (the last one run) with C{role}.
        """
        self.assertFalse(self.checks[-1].called, "no check in flight")
        r = result(role)
        self.checks[-1].callback(r)
        return r

    def in_flight(self):
        return [d for d in self.checks if not d.called]

    def delays(self):
        now = self.clock.seconds()
        return [c.getTime() - now for c in self.clock.getDelayedCalls()]

    def failures(self):
        return [e["log_failure"] for e in self.logged if "log_failure" in e]

    # -- the schedule --------------------------------------------------------

    def test_first_check_at_start(self):
        self.assertEqual(self.checks, [])
        self.assertIsNone(self.monitor.last)
        self.monitor.start()
        self.assertEqual(len(self.checks), 1)
        self.assertEqual(self.delays(), [])
        self.monitor.start()
        self.assertEqual(len(self.checks), 1)

    def test_interval_after_an_answer(self):
        self.monitor.start()
        for role in (PRIMARY, STANDBY, PRIMARY):
            r = self.answer(role)
            self.assertEqual(self.applied[-1], r)
            self.assertEqual(self.monitor.last, r)
            self.assertEqual(self.delays(), [INTERVAL])
            count = len(self.checks)
            self.clock.advance(INTERVAL - 1)
            self.assertEqual(len(self.checks), count)
            self.clock.advance(1)
            self.assertEqual(len(self.checks), count + 1)

    def test_backoff_while_nobody_answers(self):
        self.monitor.start()
        for delay in [1, 2, 4, 8, 8]:
            self.answer(UNKNOWN)
            self.assertEqual(self.delays(), [delay])
            self.clock.advance(delay)
        self.assertEqual(self.backoff.attempts, 5)
        self.answer(PRIMARY)
        self.assertEqual(self.backoff.attempts, 0)
        self.assertEqual(self.delays(), [INTERVAL])
        self.clock.advance(INTERVAL)
        self.answer(UNKNOWN)
        self.assertEqual(self.delays(), [1])

    def test_never_two_checks_at_once(self):
        self.monitor.start()
        self.clock.advance(1000)
        waiters = [self.monitor.check_now() for _ in range(3)]
        self.clock.advance(1000)
        self.assertEqual(len(self.checks), 1)
        self.answer(UNKNOWN)
        self.assertEqual(len(self.in_flight()), 1)
        self.assertEqual(self.delays(), [])
        self.clock.advance(1000)
        self.assertEqual(len(self.checks), 2)
        self.answer(PRIMARY)
        self.assertEqual([self.successResultOf(w).role for w in waiters], [PRIMARY] * 3)

    # -- asking for a check --------------------------------------------------

    def test_check_now_while_stopped(self):
        d = self.monitor.check_now()
        self.assertEqual(self.successResultOf(d), RoleResult.unknown())
        self.assertEqual(self.checks, [])
        self.assertEqual(self.applied, [])

    def test_check_now_while_waiting(self):
        """
        Starts a check at once, in place of the scheduled one; the caller
        gets its result, after which the schedule goes on.
        """
        self.monitor.start()
        self.answer(PRIMARY)
        self.clock.advance(3)
        d = self.monitor.check_now()
        self.assertEqual(len(self.checks), 2)
        self.assertEqual(self.delays(), [])
        self.assertNoResult(d)
        r = self.answer(STANDBY)
        self.assertIs(self.successResultOf(d), r)
        self.assertEqual(self.delays(), [INTERVAL])

    def test_check_now_while_backing_off(self):
        self.monitor.start()
        self.answer(UNKNOWN)
        self.clock.advance(1)
        self.answer(UNKNOWN)
        self.assertEqual(self.delays(), [2])
        d = self.monitor.check_now()
        self.assertEqual(self.delays(), [])
        self.assertEqual(len(self.in_flight()), 1)
        r = self.answer(PRIMARY)
        self.assertIs(self.successResultOf(d), r)
        self.assertEqual(self.delays(), [INTERVAL])

    def test_check_now_during_a_check_gets_the_follow_up(self):
        """
        The check in flight may have asked before whatever made the caller
        ask: the caller gets the result of the one check that follows it
        (issue 8 item 12).
        """
        self.monitor.start()
        d = self.monitor.check_now()
        first = self.answer(STANDBY)
        self.assertEqual(self.applied, [first])
        self.assertNoResult(d)
        self.assertEqual(len(self.checks), 2)
        self.assertEqual(self.delays(), [])
        second = self.answer(PRIMARY)
        self.assertIs(self.successResultOf(d), second)
        self.assertEqual(self.applied, [first, second])
        self.assertEqual(len(self.checks), 2)
        self.assertEqual(self.delays(), [INTERVAL])

    def test_callers_during_one_check_share_one_follow_up(self):
        self.monitor.start()
        waiters = [self.monitor.check_now() for _ in range(5)]
        self.answer(UNKNOWN)
        self.assertEqual(len(self.checks), 2)
        r = self.answer(PRIMARY)
        self.assertEqual([self.successResultOf(w) for w in waiters], [r] * 5)
        self.assertEqual(len(self.checks), 2)

    def test_caller_during_the_follow_up_gets_the_next(self):
        self.monitor.start()
        early = self.monitor.check_now()
        self.answer(STANDBY)
        late = self.monitor.check_now()
        follow_up = self.answer(STANDBY)
        self.assertIs(self.successResultOf(early), follow_up)
        self.assertNoResult(late)
        self.assertEqual(len(self.checks), 3)
        last = self.answer(PRIMARY)
        self.assertIs(self.successResultOf(late), last)
        self.assertEqual(self.delays(), [INTERVAL])

    def test_caller_of_a_requested_check(self):
        """
        Asking during a check that was itself asked for: that caller gets
        the check in flight, the new one the follow-up.
        """
        self.monitor.start()
        self.answer(PRIMARY)
        first = self.monitor.check_now()
        second = self.monitor.check_now()
        r1 = self.answer(PRIMARY)
        r2 = self.answer(STANDBY)
        self.assertIs(self.successResultOf(first), r1)
        self.assertIs(self.successResultOf(second), r2)

    # -- the backoff counts scheduled checks only ----------------------------

    def test_requested_checks_do_not_advance_the_backoff(self):
        """
        Bursts of checks asked for while nobody answers (file events,
        lost connections) do not stretch the wait for the next scheduled
        check (issue 8 item 4): after each, the next scheduled check comes
        after the delay the schedule would use next, however many there
        were.
        """
        self.monitor.start()
        self.answer(UNKNOWN)
        self.assertEqual((self.backoff.attempts, self.delays()), (1, [1]))
        for _ in range(20):
            d = self.monitor.check_now()
            self.answer(UNKNOWN)
            self.assertEqual(self.successResultOf(d).role, UNKNOWN)
            self.assertEqual((self.backoff.attempts, self.delays()), (1, [2]))
        self.clock.advance(2)
        self.answer(UNKNOWN)
        self.assertEqual((self.backoff.attempts, self.delays()), (2, [2]))
        self.clock.advance(2)
        self.answer(UNKNOWN)
        self.assertEqual((self.backoff.attempts, self.delays()), (3, [4]))

    def test_requested_check_answered_resets_the_backoff(self):
        self.monitor.start()
        self.answer(UNKNOWN)
        self.clock.advance(1)
        self.answer(UNKNOWN)
        self.monitor.check_now()
        self.answer(PRIMARY)
        self.assertEqual(self.backoff.attempts, 0)
        self.clock.advance(INTERVAL)
        self.answer(UNKNOWN)
        self.assertEqual(self.delays(), [1])

    def test_scheduled_check_with_a_follow_up_still_counts(self):
        """
        A scheduled check nobody answered counts toward the backoff even
        when a follow-up was asked for during it: otherwise a component
        that asks at every reconnect would keep the schedule at its
        shortest delay for as long as the server is down.
        """
        self.monitor.start()
        for attempts in range(1, 5):
            self.monitor.check_now()
            self.answer(UNKNOWN)  # the scheduled one
            self.assertEqual(self.backoff.attempts, attempts)
            self.answer(UNKNOWN)  # the follow-up
            self.assertEqual(self.backoff.attempts, attempts)
            delay = self.backoff.policy(attempts)
            self.assertEqual(self.delays(), [delay])
            self.clock.advance(delay)

    def test_scheduled_check_answered_with_a_follow_up_resets(self):
        self.monitor.start()
        for _ in range(3):
            self.answer(UNKNOWN)
            self.clock.advance(self.delays()[0])
        self.assertEqual(self.backoff.attempts, 3)
        self.monitor.check_now()
        self.answer(PRIMARY)  # the scheduled one: an answer
        self.assertEqual(self.backoff.attempts, 0)
        self.answer(UNKNOWN)  # the follow-up, a blip
        self.assertEqual(self.delays(), [1])

    # -- apply and errors ----------------------------------------------------

    def test_apply_before_waiters(self):
        seen = []
        self.monitor.start()
        d = self.monitor.check_now()
        d.addCallback(lambda r: seen.append(list(self.applied)))
        self.answer(STANDBY)
        r = self.answer(PRIMARY)
        self.assertEqual(seen, [[result(STANDBY), r]])

    def test_apply_raising_is_logged(self):
        def apply(r):
            self.applied.append(r)
            raise RuntimeError("apply broke")

        monitor = self.make(apply=apply)
        monitor.start()
        d = monitor.check_now()
        self.answer(PRIMARY)
        r = self.answer(PRIMARY)
        self.assertIs(self.successResultOf(d), r)
        self.assertIs(monitor.last, r)
        self.assertEqual(self.delays(), [INTERVAL])
        self.assertEqual([str(f.value) for f in self.failures()], ["apply broke"] * 2)

    def test_run_check_raising(self):
        def run_check():
            raise RuntimeError("check broke")

        monitor = self.make(run_check=run_check)
        monitor.start()
        self.assertEqual(self.applied, [RoleResult.unknown()])
        self.assertEqual(self.delays(), [1])
        d = monitor.check_now()
        self.assertEqual(self.successResultOf(d), RoleResult.unknown())
        self.assertEqual([str(f.value) for f in self.failures()], ["check broke"] * 2)

    def test_run_check_failing(self):
        self.monitor.start()
        d = self.monitor.check_now()
        self.checks[-1].errback(RuntimeError("check failed"))
        self.assertEqual(self.applied, [RoleResult.unknown()])
        self.assertEqual(self.backoff.attempts, 1)
        self.checks[-1].errback(RuntimeError("check failed again"))
        self.assertEqual(self.successResultOf(d).role, UNKNOWN)
        self.assertEqual(self.delays(), [2])
        self.assertEqual(len(self.failures()), 2)

    # -- stop ----------------------------------------------------------------

    def test_stop_during_a_check_forgets_it(self):
        self.monitor.start()
        self.answer(PRIMARY)
        self.clock.advance(INTERVAL)
        before = self.monitor.last
        current = self.monitor.check_now()
        self.answer(PRIMARY)
        follower = self.monitor.check_now()
        self.monitor.stop()
        self.assertEqual(self.successResultOf(current).role, UNKNOWN)
        self.assertEqual(self.successResultOf(follower).role, UNKNOWN)
        applied = list(self.applied)
        self.checks[-1].callback(result(STANDBY))
        self.assertEqual(self.applied, applied)
        self.assertEqual(self.monitor.last.role, PRIMARY)
        self.assertIsNot(self.monitor.last, before)
        self.assertEqual(self.delays(), [])
        self.assertEqual(len(self.checks), 3)

    def test_stop_while_waiting(self):
        self.monitor.start()
        self.answer(UNKNOWN)
        self.monitor.stop()
        self.assertEqual(self.delays(), [])
        self.clock.advance(100)
        self.assertEqual(len(self.checks), 1)
        self.monitor.stop()

    def test_stop_then_start_again(self):
        """
        The check forgotten at stop answers late, after a new start: only
        the new check's result counts.
        """
        self.monitor.start()
        old = self.checks[-1]
        self.monitor.stop()
        self.monitor.start()
        self.assertEqual(len(self.checks), 2)
        d = self.monitor.check_now()
        old.callback(result(STANDBY))
        self.assertEqual(self.applied, [])
        self.assertNoResult(d)
        first = self.answer(PRIMARY)
        self.assertEqual(self.applied, [first])
        second = self.answer(PRIMARY)
        self.assertIs(self.successResultOf(d), second)

    def test_stop_then_start_keeps_the_backoff(self):
        self.monitor.start()
        self.answer(UNKNOWN)
        self.monitor.stop()
        self.monitor.start()
        self.answer(UNKNOWN)
        self.assertEqual(self.delays(), [2])

    # -- reentrancy and synchronous checks -----------------------------------

    def test_synchronous_checks(self):
        answers = [result(PRIMARY), result(STANDBY), result(UNKNOWN)]
        monitor = self.make(run_check=lambda: defer.succeed(answers.pop(0)))
        monitor.start()
        self.assertEqual(self.delays(), [INTERVAL])
        self.assertEqual(self.successResultOf(monitor.check_now()).role, STANDBY)
        self.assertEqual(self.successResultOf(monitor.check_now()).role, UNKNOWN)
        self.assertEqual(self.delays(), [1])

    def test_check_now_from_apply(self):
        asked = []

        def apply(r):
            self.applied.append(r)
            if len(self.applied) == 1:
                asked.append(monitor.check_now())

        monitor = self.make(apply=apply)
        monitor.start()
        self.answer(STANDBY)
        self.assertEqual(len(self.checks), 2)
        self.assertEqual(self.delays(), [])
        r = self.answer(PRIMARY)
        self.assertIs(self.successResultOf(asked[0]), r)
        self.assertEqual(self.delays(), [INTERVAL])

    def test_stop_from_a_waiter(self):
        self.monitor.start()
        d = self.monitor.check_now()
        d.addCallback(lambda _: self.monitor.stop())
        self.answer(PRIMARY)
        self.answer(PRIMARY)
        self.assertEqual(self.delays(), [])
        self.clock.advance(100)
        self.assertEqual(len(self.checks), 2)

    def test_check_now_from_a_waiter(self):
        """
        A caller asking again as soon as its answer came gets a check that
        begins after that.
        """
        self.monitor.start()
        again = []
        d = self.monitor.check_now()
        d.addCallback(lambda _: again.append(self.monitor.check_now()))
        self.answer(STANDBY)
        self.answer(STANDBY)
        self.assertEqual(len(self.checks), 3)
        r = self.answer(PRIMARY)
        self.assertIs(self.successResultOf(again[0]), r)
