"""
What the end-to-end outbox tests and C{bench/outbox.py} deliver to, and how
they judge what was delivered.

L{AppendRecorder} is a processor for C{twistd hermes --outbox}
(C{--processor tests.support.deliveries:AppendRecorder -o FILE}): it
appends one JSON line per change to C{FILE} with one C{write(2)} on a file
opened C{O_APPEND}, before C{execute} returns.  The consumer acknowledges a
change only after C{execute} returned, so a line is in the file (the
kernel's, which a SIGKILL of the process does not lose) before its change
can leave the outbox.  Any number of processes may append to one file:
each line is one C{O_APPEND} write, so the file's order is the order in
which the lines were written, across processes.

With C{$E2E_EXECUTE_DELAY} set (seconds), each change's C{execute} then
takes that long (a Deferred, the reactor stays free): batches stay in
flight long enough for a SIGKILL to land in the middle of one.

L{FlakyRecorder} fails chosen deliveries (C{bench/flow.py}, C{bench/outbox.py
--fail-rate}); L{EventRecorder} timestamps notifications, C{start} and
C{resync} too.

L{judge} checks numbered changes (C{data["n"]} = 1, 2, ... per key, in
commit order) against what was committed.
"""

import hashlib
import json
import os
import time

from hermes_tx.components import Component


def number_of(data):
    """
    @return: the change's number: C{data["n"]} for emitted changes,
        C{data["new"]["n"]} for captured rows (C{None} for a DELETE).
    """
    if not isinstance(data, dict):
        return None
    if "n" in data:
        return data["n"]
    return (data.get("new") or {}).get("n")


class AppendRecorder(Component):
    """
    Appends C{{"pid", "id", "key", "n", "w", "attempts", "t"}} (C{t}: the
    wall-clock time of C{execute}, C{w}: the writer's token in the payload,
    if any) for each change to C{output}, one C{O_APPEND} write per line,
    before returning.  Other events are ignored.
    """

    def __init__(self, output="-", **kwargs):
        super().__init__(**kwargs)
        if output == "-":
            raise ValueError("AppendRecorder needs -o FILE")
        self.output = output
        self._fd = None
        self._pid = os.getpid()
        self._delay = float(os.environ.get("E2E_EXECUTE_DELAY") or 0)

    def set_up(self):
        self._fd = os.open(self.output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def execute(self, event):
        if event.kind != "change":
            return None
        data = event.data
        line = json.dumps({
            "pid": self._pid, "id": event.id, "key": event.key, "n": number_of(data),
            "w": data.get("w") if isinstance(data, dict) else None,
            "attempts": event.attempts, "t": time.time(),
        })
        os.write(self._fd, line.encode("utf-8") + b"\n")
        if self._delay:
            from twisted.internet import reactor, task

            return task.deferLater(reactor, self._delay, lambda: None)
        return None

    def tear_down(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Flaky(Exception):
    """
    What L{FlakyRecorder} raises for a delivery it fails.
    """


def fails_first(key, n, rate):
    """
    @return: whether the change C{(key, n)} is one of the share C{rate}
        (0 to 1) whose first delivery L{FlakyRecorder} fails: the same
        changes in every process and every run, spread like random ones (a
        SHA-256 of the key and number; a CRC would choose runs of
        neighbouring keys).
    """
    digest = hashlib.sha256(f"{key}\x00{n}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < rate * 2 ** 64


class FlakyRecorder(AppendRecorder):
    """
    An L{AppendRecorder} whose C{execute} raises L{Flaky} (and writes no
    line) for

      - the changes C{(key, n)} for which L{fails_first} holds with the
        share C{$E2E_FAIL_RATE} (e.g. C{0.03}), on their first delivery
        (C{attempts == 0}) only;
      - every delivery of the poison changes C{$E2E_POISON}, a JSON list
        of C{[key, n]} pairs.

    So every line is a successful delivery, and a change that failed
    first shows as a line with C{attempts} of 1 or more.
    """

    def __init__(self, output="-", **kwargs):
        super().__init__(output, **kwargs)
        self._rate = float(os.environ.get("E2E_FAIL_RATE") or 0)
        self._poison = {(k, n) for k, n in json.loads(os.environ.get("E2E_POISON") or "[]")}

    def execute(self, event):
        if event.kind == "change":
            key, n = event.key, number_of(event.data)
            if (key, n) in self._poison:
                raise Flaky(f"poison change {key!r} {n}: always fails")
            # Decided for every first delivery, failing or not (a rate of 0
            # fails none): a drain without failures costs the processor the
            # same work, so comparing the two measures what failures cost.
            if event.attempts == 0 and fails_first(key, n, self._rate):
                raise Flaky(f"change {key!r} {n}: its first delivery fails")
        return super().execute(event)


class EventRecorder(AppendRecorder):
    """
    An L{AppendRecorder} that also appends C{{"pid", "kind", "channel",
    "payload", "t"}} for each notification, C{start} and C{resync}; changes
    as L{AppendRecorder} writes them (with no C{kind}).
    """

    def execute(self, event):
        if event.kind == "change":
            return super().execute(event)
        line = json.dumps({
            "pid": self._pid, "kind": event.kind, "channel": getattr(event, "channel", None),
            "payload": getattr(event, "payload", None), "t": time.time(),
        })
        os.write(self._fd, line.encode("utf-8") + b"\n")
        return None


class NoOp(Component):
    """
    A processor that does nothing with each event (for drain benchmarks).
    """

    def execute(self, event):
        return None


def read_lines(path):
    """
    @return: the JSON objects of the file's whole lines, in order (a last
        line without its newline, from a process killed while writing it,
        is left out); C{[]} when the file does not exist.
    """
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split(b"\n")[:-1] if line]


class Verdict:
    """
    What L{judge} found.

    @ivar delivered: deliveries looked at.
    @ivar expected: changes committed.
    @ivar missing: C{(key, n)} committed and never delivered, sorted.
    @ivar disorder: C{(key, previous, n)}: C{n} delivered right after
        C{previous} although it is neither C{previous} again nor
        C{previous + 1}.
    @ivar duplicates: deliveries of a change delivered before.
    @ivar phantoms: C{(key, n, w)} delivered whose writer token is not the
        one committed under that number (a change that did not survive).
    """

    def __init__(self):
        self.delivered = 0
        self.expected = 0
        self.missing = []
        self.disorder = []
        self.duplicates = 0
        self.phantoms = []

    @property
    def duplicate_ratio(self):
        return self.duplicates / self.expected if self.expected else 0.0

    def summary(self):
        return (f"{self.expected} committed, {self.delivered} delivered, {len(self.missing)} missing "
                f"{self.missing[:5]}, {len(self.disorder)} out of order {self.disorder[:5]}, "
                f"{self.duplicates} duplicates ({self.duplicate_ratio:.2%}), "
                f"{len(self.phantoms)} phantoms {self.phantoms[:5]}")


def judge(deliveries, committed, tokens=None):
    """
    Judge deliveries of numbered changes.

    Order: per key, in the order delivered, each number must be the one
    delivered just before it (a duplicate: the same change again) or the
    next one (previous + 1), starting at 1.  The outbox hands out a key's
    change only once every earlier change of that key has left the outbox
    (acknowledged), and an acknowledged change is never handed out again,
    so a duplicate can only repeat the change delivered just before, never
    an older one, and no number may be skipped and delivered later.

    @param deliveries: C{(key, n)} or C{(key, n, w)} in the order delivered
        (across every consumer).
    @param committed: a dict of key to the number of changes committed to it
        (numbered 1 to that).
    @param tokens: C{None}, or a dict of C{(key, n)} to the writer token
        committed under that number (deliveries then carry C{w}).
    @return: a L{Verdict}.
    """
    verdict = Verdict()
    verdict.expected = sum(committed.values())
    last = {}
    seen = set()
    for delivery in deliveries:
        key, n = delivery[0], delivery[1]
        verdict.delivered += 1
        if tokens is not None and tokens.get((key, n)) != delivery[2]:
            verdict.phantoms.append(tuple(delivery))
        previous = last.get(key, 0)
        if n == previous and (key, n) in seen:
            verdict.duplicates += 1
            continue
        if n != previous + 1:
            verdict.disorder.append((key, previous, n))
        last[key] = n
        if (key, n) in seen:
            verdict.duplicates += 1
        seen.add((key, n))
    for key, count in sorted(committed.items()):
        verdict.missing.extend((key, n) for n in range(1, count + 1) if (key, n) not in seen)
    return verdict
