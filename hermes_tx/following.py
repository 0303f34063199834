# -*- test-case-name: tests.test_following -*-
"""
Following a server's role between checks: what is logged of role checks
(transitions only, so an outage is a few lines, not one per check), and the
burst of quick checks after a failover file changed.
"""

from twisted.logger import Logger

from hermes_tx.roles import PRIMARY, UNKNOWN

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
        L{hermes_tx.roles.HostStatus} that changed nothing logs nothing.
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
        Log the role change C{result} (a L{hermes_tx.roles.RoleResult})
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


class FileEventWindow:
    """
    After a failover file changed: check the role now, and again every
    C{interval} seconds until it differs from what it was, for at most
    C{window} seconds, because PostgreSQL deletes C{standby.signal} a few
    milliseconds before it leaves recovery.  While no host answers there is
    nothing to watch for: the window closes and the schedule goes on.

    One window at a time: a file event during a window extends it.
    """

    log = Logger()

    def __init__(self, clock, check_now, role_before, window=1.0, interval=0.01):
        """
        @param check_now: returns a Deferred firing with a role check's
            L{hermes_tx.roles.RoleResult}.
        """
        self.clock = clock
        self.check_now = check_now
        self.before = role_before
        self.interval = interval
        self.deadline = clock.seconds() + window
        self.window = window
        self._timer = None
        self._closed = False

    @property
    def open(self):
        return not self._closed

    def extend(self):
        self.deadline = self.clock.seconds() + self.window

    def start(self):
        self._check()

    def _check(self):
        self._timer = None
        if not self._closed:
            self.check_now().addCallback(self._checked)

    def _checked(self, result):
        if self._closed:
            return
        if result.role != self.before or result.role == UNKNOWN or self.clock.seconds() >= self.deadline:
            self.close()
            return
        self._timer = self.clock.callLater(self.interval, self._check)

    def close(self):
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
