# -*- test-case-name: tests.test_outbox_runs -*-
"""
L{KeyRuns}: an outbox consumer's changes handed to its processor one at a
time per key, in order.

A claim (L{hermes_tx.outbox.sql.claim_runs}) may bring a run of a key's
changes: its oldest and those behind it.  The processor gets the first
change of each key at once; the next waits (claimed, in flight) until the
one before it succeeded and its acknowledgement (or move to the dead
letters) is written: were the consumer to die before that, the change
before would be delivered again, by another consumer, after the next one.
Every change behind one that failed (released for a retry, given back, its
claim lost) is given back at once, its delivery not counted: the outbox
hands them out again after the failed change, in order.  So a key that
fell behind a retry catches up in one claim, not one claim per change.

A lost connection gives back what waits (L{KeyRuns.give_back_waiting}):
claims whose backend is gone may be taken over by another consumer.  After
a lost connection a claim may also bring, under a new claim, a change the
consumer still has (its claim taken over by this consumer's new backend):
the processor gets it again, as before runs.
"""

from collections import deque

#: settled kinds after which the next change of the key may go on
_WENT = ("ack", "dead")
#: settled kinds that put a change back in the outbox
_BACK = ("release", "unclaim")


class KeyRuns:
    """
    Which change of each key the processor has, and which wait behind it.
    """

    def __init__(self, hand_on, give_back):
        """
        @param hand_on: called with a list of changes for the processor
            (in order).
        @param give_back: called with a list of changes to give back to
            the outbox, their delivery not counted.
        """
        self._hand_on = hand_on
        self._give_back = give_back
        self._handed = {}  # (topic, key) -> id of the change the processor has
        self._waiting = {}  # (topic, key) -> deque of changes behind it, oldest first

    @property
    def waiting(self):
        """
        @return: how many changes wait behind the change of their key.
        """
        return sum(len(queue) for queue in self._waiting.values())

    def admit(self, changes):
        """
        The changes a claim brought, in id order per topic.

        @return: the changes for the processor now; the others wait behind
            the change of their key.
        """
        now = []
        handed, waiting = self._handed, self._waiting
        for change in changes:
            key = (change.topic, change.key)
            if handed.get(key) == change.id:
                # The change in hand claimed again (its claim was taken
                # over after a lost connection): the processor gets it
                # again, under the new claim (the ledger holds that one).
                now.append(change)
            elif key in handed:
                queue = waiting.setdefault(key, deque())
                for i, queued in enumerate(queue):
                    if queued.id == change.id:
                        queue[i] = change  # claimed again: the new claim
                        break
                else:
                    queue.append(change)
            else:
                handed[key] = change.id
                now.append(change)
        return now

    def settled(self, change, kind):
        """
        The ledger settled C{change}: C{kind} is C{"ack"}, C{"dead"},
        C{"release"} or C{"unclaim"} (the write it owes).  After a release
        or an unclaim of the change in hand, what waits behind it goes
        back; after an acknowledgement, the next waits for the write
        (L{written}).
        """
        if kind not in _BACK:
            return
        # (A change waiting behind another is only ever given back by this
        # object, which has taken it out of its queue first.)
        key = (change.topic, change.key)
        if self._handed.get(key) == change.id:
            del self._handed[key]
            self._drop(key)

    def written(self, change, kind, found=True):
        """
        The write C{kind} owed for C{change} is done.  An acknowledgement
        or a dead letter lets the next change of the key go on if the write
        C{found} the change under its claim; if not, its claim was lost,
        and what waits behind it goes back.
        """
        if kind not in _WENT:
            return
        key = (change.topic, change.key)
        if self._handed.get(key) != change.id:
            return
        if found:
            self._next(key)
        else:
            del self._handed[key]
            self._drop(key)

    def lost(self, change):
        """
        The claim of C{change} was lost (it expired: another consumer may
        have it): what waits behind it goes back.
        """
        key = (change.topic, change.key)
        if self._handed.get(key) == change.id:
            del self._handed[key]
            self._drop(key)

    def give_back_waiting(self):
        """
        Give back every change waiting behind another of its key (the
        connection holding their claims is lost: until a new one extends
        them they may be another consumer's, and one handed on now could
        reach the processor after that consumer delivered the change
        before it).
        """
        waiting = [change for queue in self._waiting.values() for change in queue]
        self._waiting.clear()
        if waiting:
            self._give_back(waiting)

    def clear(self):
        """
        Nothing is in flight any more.
        """
        self._handed.clear()
        self._waiting.clear()

    def _next(self, key):
        queue = self._waiting.get(key)
        if not queue:
            del self._handed[key]
            return
        change = queue.popleft()
        if not queue:
            del self._waiting[key]
        self._handed[key] = change.id
        self._hand_on([change])

    def _drop(self, key):
        queue = self._waiting.pop(key, None)
        if queue:
            self._give_back(list(queue))
