# -*- test-case-name: tests.test_output_writer,tests.test_output_files -*-
"""
Writing lines to a file or a pipe without blocking the reactor.

  - L{hermes_tx.output.writer.LineWriter}: the reactor's side: buffers
    whole lines, hands them to a thread in chunks, says when a line is
    written (or when there is room for more) and what failed; built on
    L{hermes_tx.output.stream} (positions, waiters) and
    L{hermes_tx.output.machine} (the output's lifecycle, an Automat
    machine);
  - L{hermes_tx.output.worker.ThreadWorker}: the thread, running one
    blocking call at a time;
  - L{hermes_tx.output.files}: the blocking calls themselves: open an
    output, write a chunk and say how much of it the operating system took.

L{hermes_tx.processors.JsonLinesProcessor} is built on them.
"""
