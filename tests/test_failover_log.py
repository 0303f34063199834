"""
Tests for L{hermes_tx.failover.log}: what L{RoleLog} logs of a sequence of
role checks, on a L{task.Clock}.
"""

from twisted.internet import task
from twisted.logger import Logger, formatEvent
from twisted.trial import unittest

from hermes_tx.failover.log import REMINDER_EVERY, RoleLog
from hermes_tx.postgres.hosts import HostEntry
from hermes_tx.failover.roles import PRIMARY, STANDBY, UNKNOWN, HostStatus, RoleResult

A = HostEntry("127.0.0.1", "", "5432")
B = HostEntry("127.0.0.1", "", "5433")
REFUSED = "OperationalError: connection refused"
CLOSED = "OperationalError: server closed the connection unexpectedly"


def result(*statuses):
    """
    @param statuses: C{(entry, role, error)} per host.
    @return: the L{RoleResult} check_roles would give for them.
    """
    hosts = tuple(HostStatus(*s) for s in statuses)
    primaries = [s.entry for s in hosts if s.role == PRIMARY]
    if primaries:
        return RoleResult(PRIMARY, primaries[0], hosts)
    if any(s.role == STANDBY for s in hosts):
        return RoleResult(STANDBY, None, hosts)
    return RoleResult(UNKNOWN, None, hosts)


class RoleLogTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.events = []
        self.role = UNKNOWN

    def role_log(self, multi_host):
        return RoleLog(Logger(observer=self.events.append), self.clock, multi_host)

    def record(self, log, r):
        """
        Record C{r} as the Client does (each host's answer as it arrives,
        then the result; the old role is the last result's) and return the
        lines it logged, as C{(level, text)}.
        """
        start = len(self.events)
        for status in r.hosts:
            if status.role is not None:
                log.host_status(status)
        log.record(self.role, r)
        self.role = r.role
        return [(e["log_level"].name, formatEvent(e)) for e in self.events[start:]]

    def test_single_host_transitions(self):
        log = self.role_log(multi_host=False)
        self.assertEqual(self.record(log, result((A, PRIMARY, None))),
                         [("info", "role: unknown -> primary")])
        self.assertEqual(self.record(log, result((A, PRIMARY, None))), [])
        self.assertEqual(self.record(log, result((A, STANDBY, None))),
                         [("info", "role: primary -> standby")])

    def test_single_host_failing_and_answering_again(self):
        log = self.role_log(multi_host=False)
        self.record(log, result((A, PRIMARY, None)))
        self.assertEqual(self.record(log, result((A, UNKNOWN, REFUSED))), [
            ("warn", f"role check failed: {REFUSED}"),
            ("info", "role: primary -> unknown"),
        ])
        for _ in range(10):
            self.assertEqual(self.record(log, result((A, UNKNOWN, REFUSED))), [])
        self.assertEqual(self.record(log, result((A, UNKNOWN, CLOSED))),
                         [("warn", f"role check failed: {CLOSED}")])
        self.assertEqual(self.record(log, result((A, PRIMARY, None))),
                         [("info", "role: unknown -> primary")])
        self.assertEqual(self.record(log, result((A, UNKNOWN, REFUSED))), [
            ("warn", f"role check failed: {REFUSED}"),
            ("info", "role: primary -> unknown"),
        ])

    def test_multi_host_wording(self):
        log = self.role_log(multi_host=True)
        self.assertEqual(self.record(log, result((A, STANDBY, None), (B, PRIMARY, None))),
                         [("info", "role: unknown -> primary (127.0.0.1:5433)")])
        self.assertEqual(self.record(log, result((A, STANDBY, None), (B, UNKNOWN, REFUSED))), [
            ("warn", f"role check failed: 127.0.0.1:5433: {REFUSED}"),
            ("info", "role: primary -> standby"),
        ])
        self.assertEqual(self.record(log, result((A, STANDBY, None), (B, UNKNOWN, REFUSED))), [])
        self.assertEqual(self.record(log, result((A, STANDBY, None), (B, STANDBY, None))),
                         [("info", "127.0.0.1:5433 answers again (standby)")])
        self.assertEqual(self.record(log, result((A, PRIMARY, None), (B, STANDBY, None))),
                         [("info", "role: standby -> primary (127.0.0.1:5432)")])

    def test_a_host_failing_while_another_stays_primary(self):
        log = self.role_log(multi_host=True)
        self.record(log, result((A, PRIMARY, None), (B, STANDBY, None)))
        self.assertEqual(self.record(log, result((A, PRIMARY, None), (B, UNKNOWN, REFUSED))),
                         [("warn", f"role check failed: 127.0.0.1:5433: {REFUSED}")])
        self.assertEqual(self.record(log, result((A, PRIMARY, None), (B, STANDBY, None))),
                         [("info", "127.0.0.1:5433 answers again (standby)")])

    def test_hosts_not_answered_in_time_are_skipped(self):
        """
        A host whose answer did not come before the check decided (role
        C{None}) is neither failing nor answering: nothing is logged, and
        its last state stands.
        """
        log = self.role_log(multi_host=True)
        self.record(log, result((A, PRIMARY, None), (B, UNKNOWN, REFUSED)))
        self.assertEqual(self.record(log, result((A, PRIMARY, None), (B, None, None))), [])
        self.assertEqual(self.record(log, result((A, PRIMARY, None), (B, UNKNOWN, REFUSED))), [])
        self.assertEqual(self.record(log, result((A, PRIMARY, None), (B, None, None))), [])
        self.assertEqual(self.record(log, result((A, PRIMARY, None), (B, STANDBY, None))),
                         [("info", "127.0.0.1:5433 answers again (standby)")])

    def test_reminder_while_unknown(self):
        """
        While no host answers, one line a minute says so (the first check
        that failed logged already), not one per check.
        """
        log = self.role_log(multi_host=False)
        self.record(log, result((A, PRIMARY, None)))
        lines = []
        for second in range(130):
            lines += self.record(log, result((A, UNKNOWN, REFUSED)))
            self.clock.advance(1)
        self.assertEqual(lines, [
            ("warn", f"role check failed: {REFUSED}"),
            ("info", "role: primary -> unknown"),
            ("warn", "still no answer after 61 role checks over 60 s"),
            ("warn", "still no answer after 121 role checks over 120 s"),
        ])

    def test_reminder_counts_again_after_an_answer(self):
        log = self.role_log(multi_host=False)
        for _ in range(30):
            self.record(log, result((A, UNKNOWN, REFUSED)))
            self.clock.advance(1)
        self.record(log, result((A, STANDBY, None)))
        lines = []
        for _ in range(61):
            lines += self.record(log, result((A, UNKNOWN, REFUSED)))
            self.clock.advance(1)
        self.assertEqual(lines[-1], ("warn", "still no answer after 61 role checks over 60 s"))
        self.assertEqual(len([line for line in lines if "still no answer" in line[1]]), 1)
        self.assertEqual(REMINDER_EVERY, 60.0)

    def test_reset(self):
        log = self.role_log(multi_host=False)
        self.record(log, result((A, UNKNOWN, REFUSED)))
        self.clock.advance(59)
        log.reset()
        self.assertEqual(self.record(log, result((A, UNKNOWN, REFUSED))),
                         [("warn", f"role check failed: {REFUSED}")])
        self.clock.advance(59)
        self.assertEqual(self.record(log, result((A, UNKNOWN, REFUSED))), [])

    def test_no_hosts(self):
        log = self.role_log(multi_host=False)
        self.assertEqual(self.record(log, RoleResult.unknown()), [])
        self.role = STANDBY
        self.assertEqual(self.record(log, RoleResult.unknown()),
                         [("info", "role: standby -> unknown")])
