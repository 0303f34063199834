"""
Reading the other end of a pipe a process writes JSON lines into, for the
tests of the JSON-lines processor and C{bench/stalls.py}.
"""

import json
import os
import threading


class PipeReader(threading.Thread):
    """
    Reads a pipe's read end until end of file once started (in a thread of
    its own: reads block), then closes it.

    @ivar data: what was read so far.
    """

    def __init__(self, fd):
        super().__init__(daemon=True)
        self.fd = fd
        self.data = bytearray()

    def run(self):
        while True:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                break
            self.data += chunk
        os.close(self.fd)

    def lines(self):
        """@return: how many complete lines were read so far."""
        return bytes(self.data).count(b"\n")

    def records(self):
        """@return: the complete lines read so far, parsed."""
        return [json.loads(line) for line in bytes(self.data).split(b"\n")[:-1]]
