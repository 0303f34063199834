# -*- test-case-name: tests.test_components -*-
"""
The hot loop of a L{hermes_tx.components.Component}: take items from the
pipe and run C{pre_execute -> execute -> post_execute} on each.

It runs once per notification, so it avoids what costs: no Deferred per
item while items are queued (they are popped straight from the pipe's
pending list), no call to the default C{pre_execute}/C{post_execute}, and no
C{isinstance(x, Deferred)} on values of types already known to be plain
(Deferred's ABC metaclass makes each such check cost about as much as a
trivial step).
"""

from twisted.internet import defer

from hermes_tx.events import Event

_PLAIN_TYPES = {type(None)}


def _ignore(value):
    return None


def _is_deferred(value):
    """
    C{isinstance(value, Deferred)}, remembering the types that are not.
    """
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return False
    if isinstance(value, defer.Deferred):
        return True
    _PLAIN_TYPES.add(kind)
    return False


@defer.inlineCallbacks
def run_items(component, generation, default_pre_execute, default_post_execute):
    """
    Process items until the component stops, terminates, or a newer run of
    it begins.

    @param component: the L{hermes_tx.components.Component}.
    @param generation: the number of this run (see C{Component._generation}).
    @param default_pre_execute: the default C{pre_execute} function, which
        is not called when the component did not override it.
    @param default_post_execute: likewise for C{post_execute}.
    @return: a Deferred firing when the loop has ended.
    """
    # While items are queued they are taken straight from the pipe's pending
    # list; only when the pipe is empty does the loop wait on get().
    # inlineCallbacks turns the Deferreds a step returns into waits without
    # recursion.
    pipe = component.notification_pipe
    pending = getattr(pipe, "pending", None)
    if pending is None:
        pending = ()
    take_one = getattr(pending, "popleft", None) or (lambda: pending.pop(0))
    check_space = getattr(pipe, "check_space", None) or (lambda: None)
    max_batch = component.max_batch
    processed = component.processed
    # The defaults of pre_execute (the item itself) and post_execute
    # (nothing) are not called: same result, two calls fewer per item.
    pre_execute = component.pre_execute
    execute = component.execute
    post_execute = component.post_execute
    if getattr(pre_execute, "__func__", None) is default_pre_execute:
        pre_execute = None
    if getattr(post_execute, "__func__", None) is default_post_execute:
        post_execute = None
    plain = _PLAIN_TYPES
    while not component._stopping:
        if pending:
            item = _take_batch(pipe, max_batch, None) if max_batch else take_one()
        else:
            check_space()
            component._waiting = pipe.get()
            try:
                item = yield component._waiting
            except defer.CancelledError:
                break
            finally:
                component._waiting = None
            if max_batch:
                item = _take_batch(pipe, max_batch, item)
        component.current_item = item
        try:
            # pre_execute -> execute -> post_execute, inlined: this runs
            # once per notification.  A step's Deferred is waited for;
            # plain values go straight on.
            value = pre_execute() if pre_execute is not None else item
            if type(value) not in plain and _is_deferred(value):
                yield value.addCallback(execute).addCallback(post_execute or _ignore)
                if generation != component._generation:
                    return
                check_space()
            else:
                value = execute(value)
                if type(value) not in plain and _is_deferred(value):
                    yield value.addCallback(post_execute or _ignore)
                    if generation != component._generation:
                        return
                    check_space()
                elif post_execute is not None:
                    value = post_execute(value)
                    if type(value) not in plain and _is_deferred(value):
                        yield value
                        if generation != component._generation:
                            return
                        check_space()
        except Exception as error:
            if generation != component._generation:
                return
            component.current_item = None
            if not (yield component._handle_error(error, item)):
                break
            continue
        component.current_item = None
        component._backoff_attempts = 0
        if max_batch:
            for event in item:
                if type(event) is Event and event.kind == "notification":
                    processed[event.channel] = processed.get(event.channel, 0) + 1
        elif type(item) is Event and item.kind == "notification":
            processed[item.channel] = processed.get(item.channel, 0) + 1


def _take_batch(pipe, limit, first):
    """
    @return: a list of up to C{limit} items: C{first} (when not C{None})
        and then whatever is queued already, oldest first.
    """
    batch = [] if first is None else [first]
    room = limit - len(batch)
    if hasattr(pipe, "take"):
        batch.extend(pipe.take(room))
    else:
        batch.extend(pipe.pending[:room])
        del pipe.pending[:room]
    return batch

