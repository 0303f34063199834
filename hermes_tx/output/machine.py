# -*- test-case-name: tests.test_output_writer -*-
"""
The lifecycle of an output written by a thread, as an Automat machine
(L{OutputMachine}, for L{hermes_tx.output.writer.LineWriter}).  At most one
call is in the thread at a time, so nothing overtakes a write that failed:

  - C{Starting}: the first open is in the thread;
  - C{Idle}: the output is open, nothing is in the thread;
  - C{Writing}: a chunk is in the thread;
  - C{WritingThenReopen}: likewise, and a reopen waits for it;
  - C{Failed}: the last write failed; lines stay buffered until C{retry}
    (or a reopen);
  - C{Reopening}: the output's path is being opened again (log rotation);
    once it is, the rest of a line the old file took only part of is
    dropped, the old file closed (in the thread) and lines go to the new
    one;
  - C{Closing}: closed, once the call in the thread returns;
  - C{Closed}: the last call (closing the output) is in the thread or done.
"""

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from automat import TypeMachineBuilder
from twisted.internet import defer
from twisted.logger import Logger

from hermes_tx.exceptions import one_line
from hermes_tx.output.stream import Stream, WriteFailed


class _Inputs(Protocol):
    def write(self) -> None:
        "Hand buffered lines to the thread, if it is free."

    def wrote(self, count: int) -> None:
        "The thread wrote the whole chunk (C{count} bytes)."

    def failed(self, count: int, error: Exception) -> None:
        "The thread's write stopped after C{count} bytes with C{error}."

    def retry(self) -> None:
        "Write again after a failure."

    def reopen(self) -> None:
        "Open the output again (log rotation)."

    def opened(self, output: object) -> None:
        "The thread opened the output."

    def open_failed(self, error: Exception) -> None:
        "The thread could not open the output."

    def close(self) -> None:
        "Close the output once nothing is in the thread."


@dataclass
class _Core:
    worker: Any
    open_output: Callable[[], Any]
    stream: Stream
    log: Logger
    where: str
    started: defer.Deferred
    closed: defer.Deferred
    output: Any = None
    error: Optional[Exception] = None  # of the last write, until one works

    def send(self, machine):
        chunk = self.stream.take_chunk()
        output = self.output

        def done(result, error):
            count, error = result if error is None else (0, error)
            if error is None:
                machine.wrote(count)
            else:
                machine.failed(count, error)
            self.stream.settle()

        self.worker.submit(lambda: output.write(chunk), done)

    def account(self, count):
        self.stream.account(count, getattr(self.output, "holding", 0))

    def open(self, machine):
        def done(output, error):
            if error is None:
                machine.opened(output)
            else:
                machine.open_failed(error)
            self.stream.settle()

        self.worker.submit(self.open_output, done)

    def close_output(self, *outputs):
        """
        Close the outputs in the thread, end the thread, and fail whatever
        still waits.
        """
        outputs = [o for o in outputs if o is not None]

        def close():
            for output in outputs:
                output.close()

        def done(_, error):
            if error is not None:
                self.log.warn("closing {where} failed: {error}", where=self.where,
                              error=one_line(error))
            self.stream.fire(self.closed)
            self.stream.settle()

        self.worker.submit(close, done)
        self.worker.stop()
        self.stream.fail_all(WriteFailed("the output was closed"))

    def write_more(self, machine):
        if self.stream.wants_writing():
            machine.write()


def _build():
    builder = TypeMachineBuilder(_Inputs, _Core)
    starting = builder.state("Starting")
    idle = builder.state("Idle")
    writing = builder.state("Writing")
    writing_then_reopen = builder.state("WritingThenReopen")
    failed = builder.state("Failed")
    reopening = builder.state("Reopening")
    closing = builder.state("Closing")
    closed = builder.state("Closed")

    # -- opening ------------------------------------------------------------
    @starting.upon(_Inputs.opened).to(idle)
    def first_open(inputs, core, output):
        core.output = output
        core.stream.fire(core.started)

    @starting.upon(_Inputs.open_failed).to(closed)
    def cannot_open(inputs, core, error):
        core.worker.stop()
        core.stream.fire(core.started, error)
        core.stream.fire(core.closed)

    # -- writing ------------------------------------------------------------
    @idle.upon(_Inputs.write).to(writing)
    @failed.upon(_Inputs.retry).to(writing)
    def send(inputs, core):
        core.send(inputs)

    @writing.upon(_Inputs.wrote).to(idle)
    def wrote(inputs, core, count):
        core.account(count)
        core.error = None
        core.write_more(inputs)

    @writing.upon(_Inputs.failed).to(failed)
    def write_failed(inputs, core, count, error):
        core.account(count)
        core.error = error
        core.stream.fail_waiters(WriteFailed(error))

    # -- reopening ----------------------------------------------------------
    @idle.upon(_Inputs.reopen).to(reopening)
    @failed.upon(_Inputs.reopen).to(reopening)
    def reopen(inputs, core):
        core.open(inputs)

    writing.upon(_Inputs.reopen).to(writing_then_reopen).returns(None)

    @writing_then_reopen.upon(_Inputs.wrote).to(reopening)
    def wrote_then_reopen(inputs, core, count):
        core.account(count)
        core.open(inputs)

    @writing_then_reopen.upon(_Inputs.failed).to(reopening)
    def failed_then_reopen(inputs, core, count, error):
        core.account(count)
        core.stream.fail_waiters(WriteFailed(error))
        core.open(inputs)

    @reopening.upon(_Inputs.opened).to(idle)
    def swap(inputs, core, output):
        if core.stream.drop_partial():
            core.log.warn("{where}: the rest of a partly written line was dropped on reopening",
                          where=core.where)
        old, core.output = core.output, output
        core.error = None
        core.stream.flush_to = core.stream.accepted  # what the old file did not take
        core.worker.submit(old.close, lambda _, error: error is not None and core.log.warn(
            "closing the old {where} failed: {error}", where=core.where, error=one_line(error)))
        core.write_more(inputs)

    @reopening.upon(_Inputs.open_failed).to(idle)
    def keep_old(inputs, core, error):
        core.log.warn("could not reopen {where}: {error}; writing on to the old file",
                      where=core.where, error=one_line(error))
        core.write_more(inputs)

    # -- closing ------------------------------------------------------------
    @idle.upon(_Inputs.close).to(closed)
    @failed.upon(_Inputs.close).to(closed)
    def close(inputs, core):
        core.close_output(core.output)

    @starting.upon(_Inputs.close).to(closing)
    @writing.upon(_Inputs.close).to(closing)
    @writing_then_reopen.upon(_Inputs.close).to(closing)
    @reopening.upon(_Inputs.close).to(closing)
    def close_after_the_call(inputs, core):
        core.stream.fail_all(WriteFailed("the output was closed"))

    @closing.upon(_Inputs.wrote).to(closed)
    @closing.upon(_Inputs.failed).to(closed)
    def closed_after_writing(inputs, core, count, error=None):
        core.account(count)
        core.close_output(core.output)

    @closing.upon(_Inputs.opened).to(closed)
    def closed_after_opening(inputs, core, output):
        if core.output is None:  # the first open: a stop while starting
            core.stream.fire(core.started, WriteFailed("the output was closed"))
        core.close_output(core.output, output)

    @closing.upon(_Inputs.open_failed).to(closed)
    def closed_after_failed_open(inputs, core, error):
        if core.output is None:
            core.stream.fire(core.started, error)
        core.close_output(core.output)

    # -- nothing to do --------------------------------------------------------
    quiet = {
        starting: ("write", "retry", "reopen"),
        idle: ("retry",),
        writing: ("write", "retry"),
        writing_then_reopen: ("write", "retry", "reopen"),
        failed: ("write",),
        reopening: ("write", "retry", "reopen"),
        closing: ("write", "retry", "reopen", "close"),
        closed: ("write", "retry", "reopen", "close"),
    }
    for state, names in quiet.items():
        for name in names:
            state.upon(getattr(_Inputs, name)).loop().returns(None)
    return builder.build()


#: the machine's factory: C{OutputMachine(core)}
OutputMachine = _build()


def make_core(worker, open_output, stream, log, where):
    """
    @return: the data of an L{OutputMachine}: see
        L{hermes_tx.output.writer.LineWriter}.
    """
    return _Core(worker, open_output, stream, log, where,
                 started=defer.Deferred(), closed=defer.Deferred())
