# -*- test-case-name: tests.test_processors -*-
"""
Ready-made processors.

L{JsonLinesProcessor} is the default processor of C{twistd hermes}: one JSON
object per event, one per line, so C{twistd -n hermes ... | jq} works.
"""

import json
import os
import sys

from hermes_tx.components import Component

#: Flush after this many buffered lines even while more items are queued.
FLUSH_EVERY = 512


class JsonLinesProcessor(Component):
    """
    Writes each event as a JSON object with the keys C{kind}, C{channel},
    C{payload}, C{pid} and C{received_at}, one per line, UTF-8, non-ASCII
    characters kept as they are.

    Lines are flushed in batches while a backlog is being worked through, and
    at once whenever the queue runs empty, so a line is never held back while
    nothing else is coming.
    """

    def __init__(self, output="-", **kwargs):
        """
        @param output: C{"-"} for standard output, a file path (appended to)
            or an open text file.
        @param kwargs: passed to L{Component}.
        """
        Component.__init__(self, **kwargs)
        self.output = output
        self._file = None
        self._owns_file = False
        self._unflushed = 0

    def set_up(self):
        if self.output == "-":
            # twistd replaces sys.stdout with a logging shim: write to the
            # process's real standard output, always in UTF-8.
            fd = os.dup(sys.__stdout__.fileno())
            self._file = open(fd, "w", encoding="utf-8", closefd=True)
            self._owns_file = True
        elif isinstance(self.output, str):
            self._file = open(self.output, "a", encoding="utf-8")
            self._owns_file = True
        else:
            self._file = self.output

    def execute(self, event):
        record = event.as_dict() if hasattr(event, "as_dict") else event
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._unflushed += 1
        return event

    def post_execute(self, exec_value):
        # The pipe's pending list is what is already queued: flush when it is
        # empty (nothing more is coming right now) or the batch is large.
        if self._unflushed >= FLUSH_EVERY or not getattr(self.notification_pipe, "pending", None):
            self.flush()

    def flush(self):
        """
        Write out buffered lines.
        """
        if self._file is not None and self._unflushed:
            self._file.flush()
        self._unflushed = 0

    def tear_down(self):
        self.flush()
        if self._owns_file:
            self._file.close()
        self._file = None
        self._owns_file = False
