# -*- test-case-name: tests.test_failover_log -*-
"""
L{RoleLog}: what is logged of role checks: transitions only, so an outage
is a few lines, not one per check.
"""

from hermes_tx.failover.roles import PRIMARY, UNKNOWN

#: while no host answers, a reminder is logged this often (seconds)
REMINDER_EVERY = 60.0


class RoleLog:
    """
    Logs what changed from one role check to the next: the role, and each
    host becoming unreachable (with why) or answering again, as the
    answers arrive.
    """

    def __init__(self, log, clock, multi_host, scrub=lambda text: text):
        """
        @param scrub: takes a line, returns it without the DSN's secrets (a
            host name can be a piece of a mistyped password).
        """
        self.scrub = scrub
        self.log = log
        self.clock = clock
        self.multi_host = multi_host
        self._hosts = {}  # entry -> (role, error) last logged
        self._unknown_since = None
        self._reminded_at = None
        self._failed_checks = 0

    def reset(self):
        self._hosts.clear()
        self._unknown_since = self._reminded_at = None
        self._failed_checks = 0

    def host_status(self, status):
        """
        Log a host that stopped answering (with why) or answers again; a
        L{hermes_tx.failover.roles.HostStatus} that changed nothing logs nothing.
        """
        seen = (status.role, status.error)
        before = self._hosts.get(status.entry)
        if before == seen:
            return
        self._hosts[status.entry] = seen
        if status.error is not None:
            where = f"{status.entry.label}: " if self.multi_host else ""
            self.log.warn("role check failed: {where}{error}", where=self.scrub(where),
                          error=self.scrub(status.error))
        elif before is not None and before[1] is not None and self.multi_host:
            self.log.info("{host} answers again ({role})", host=self.scrub(status.entry.label),
                          role=status.role)

    def record(self, old_role, result):
        """
        Log the role change C{result} (a L{hermes_tx.failover.roles.RoleResult})
        makes, if any.
        """
        if result.role != old_role:
            where = ""
            if result.role == PRIMARY and self.multi_host and result.primary is not None:
                where = self.scrub(f" ({result.primary.label})")
            self.log.info("role: {old} -> {new}{where}", old=old_role, new=result.role, where=where)
        self._remind(result)

    def _remind(self, result):
        now = self.clock.seconds()
        if result.role != UNKNOWN:
            self._unknown_since = self._reminded_at = None
            self._failed_checks = 0
            return
        self._failed_checks += 1
        if self._unknown_since is None:
            self._unknown_since = self._reminded_at = now
        elif now - self._reminded_at >= REMINDER_EVERY:
            self._reminded_at = now
            self.log.warn(
                "still no answer after {n} role checks over {t:.0f} s",
                n=self._failed_checks, t=now - self._unknown_since,
            )

