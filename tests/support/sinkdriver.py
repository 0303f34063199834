"""
A stand-in for the outbox consumer, to drive a sink as it will be driven:
batches of at most one change per key, outcomes applied (done, retried
after a delay, rejected), never more than one change of a key in flight,
and a key's next change only after the previous one was settled.
"""

import json
import time
from collections import OrderedDict, deque

from twisted.internet import defer, reactor, task

from hermes_tx.events import Change
from hermes_tx.outcomes import BatchOutcome, Reject, Retry


def make_changes(keys, per_key, topic="items", start_id=1):
    """
    @return: C{keys * per_key} changes, ids increasing, keys interleaved;
        each an UPDATE of row C{{"k": key, "n": sequence}}.
    """
    changes, next_id = [], start_id
    for n in range(per_key):
        for k in range(keys):
            key = f"key-{k}"
            data = {"table": "public.items", "op": "INSERT" if n == 0 else "UPDATE",
                    "key": {"k": key}, "old": None, "new": {"k": key, "n": n}}
            changes.append(Change(next_id, topic, key, 0, 1_700_000_000.0 + next_id,
                                  json.dumps(data), data))
            next_id += 1
    return changes


def read_change(id_, key, row, topic="items"):
    """
    @return: a change as C{hermes-tx backfill} writes it for an existing
        row: op C{READ}, C{new} = the row, C{old} = null.
    """
    data = {"table": "public.items", "op": "READ", "key": {"k": key}, "old": None, "new": row}
    return Change(id_, topic, key, 0, 1_700_000_000.0 + id_, json.dumps(data), data)


def again(change):
    """@return: C{change} as the outbox hands it out next time."""
    return Change(change.id, change.topic, change.key, change.attempts + 1,
                  change.created_at, change.payload, change.data)


class Driver:
    """
    Runs changes through a sink like the outbox consumer.

    @ivar rejected: changes the sink rejected (they would be dead letters).
    @ivar retries: how many times a change was handed back.
    @ivar errors: exceptions other than Retry/Reject the sink raised.
    @ivar batches: how many times C{execute} was called.
    """

    def __init__(self, sink, changes, max_batch=None, retry_delay=0.005, max_delay=0.2,
                 fault=None):
        """
        @param fault: C{None}, or a callable taking the batch number, called
            just before each C{execute} (to break the other side); when it
            returns a Deferred, the next batch waits for it.
        """
        self.sink = sink
        self.max_batch = max_batch or sink.max_batch
        self.retry_delay = retry_delay
        self.max_delay = max_delay
        self.fault = fault
        self.queues = OrderedDict()
        for c in changes:
            self.queues.setdefault(c.key, deque()).append(c)
        self.available_at = {}
        self.rejected = []
        self.retries = 0
        self.errors = []
        self.batches = 0

    def _batch(self, now):
        batch = []
        for key, queue in self.queues.items():
            if queue and self.available_at.get(key, 0) <= now:
                batch.append(queue[0])
                if len(batch) == self.max_batch:
                    break
        # round robin: keys served now go to the back
        for c in batch:
            self.queues.move_to_end(c.key)
        return batch

    def _retry(self, change, after):
        delay = self.retry_delay if after is None else min(max(after, self.retry_delay),
                                                           self.max_delay)
        self.available_at[change.key] = time.monotonic() + delay
        queue = self.queues[change.key]
        queue[0] = again(queue[0])
        self.retries += 1

    def _done(self, change):
        self.queues[change.key].popleft()

    @defer.inlineCallbacks
    def run(self, timeout=60.0):
        """
        @return: a Deferred firing when every change was done or rejected.
        @raise AssertionError: not within C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        while any(self.queues.values()):
            now = time.monotonic()
            if now > deadline:
                left = sum(len(q) for q in self.queues.values())
                raise AssertionError(f"{left} changes still pending after {timeout} s")
            batch = self._batch(now)
            if not batch:
                yield task.deferLater(reactor, 0.002, lambda: None)
                continue
            breaking = self.fault(self.batches) if self.fault is not None else None
            self.batches += 1
            try:
                outcome = yield defer.maybeDeferred(self.sink.execute, batch)
            except Retry as e:
                outcome = BatchOutcome([(c, str(e), e.retry_after) for c in batch])
            except Reject as e:
                outcome = BatchOutcome(rejected=[(c, str(e)) for c in batch])
            except Exception as e:  # the component's error strategy: back off
                self.errors.append(e)
                outcome = BatchOutcome([(c, repr(e), None) for c in batch])
            if isinstance(breaking, defer.Deferred):
                yield breaking
            outcome = outcome or BatchOutcome()
            for c, _, after in outcome.retry:
                self._retry(c, after)
            for c, _ in outcome.rejected:
                self.rejected.append(c)
                self._done(c)
            for c in outcome.done(batch):
                self._done(c)


def collapse(ids):
    """
    @return: C{ids} without consecutive repeats (an at-least-once
        redelivery of a change sits right after its first delivery).
    """
    out = []
    for i in ids:
        if not out or out[-1] != i:
            out.append(i)
    return out


def assert_delivered_in_order(case, changes, received):
    """
    Every change arrived, per key in id order; a duplicate only ever
    directly follows its first copy.

    @param received: C{(key, id)} pairs in the order the other side got
        them.
    """
    expected, got = {}, {}
    for c in changes:
        expected.setdefault(c.key, []).append(c.id)
    for key, i in received:
        got.setdefault(key, []).append(int(i))
    case.assertEqual(sorted(got), sorted(expected))
    for key in expected:
        case.assertEqual(collapse(got[key]), expected[key], f"key {key}")
