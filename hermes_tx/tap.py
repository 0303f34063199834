# -*- test-case-name: tests.test_tap -*-
"""
C{twistd hermes}: command-line options and the service they make.

    twistd [-n] hermes --dsn DSN --channel NAME [--channel NAME ...]
        [--processor module:Class] [--output PATH|-] [--backoff-limit N]
"""

import importlib
import inspect
import os
import signal
import sys

from twisted.logger import textFileLogObserver
from twisted.python import usage

from hermes_tx import dsn as dsnlib
from hermes_tx.client import Client
from hermes_tx.components import Component
from hermes_tx.connectors import PostgresConnector
from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.listeners import PostgresNotificationListener, validate_channels

DEFAULT_PROCESSOR = "hermes_tx.processors:JsonLinesProcessor"


def stderr_log_observer():
    """
    twistd C{--logger} factory: log to standard error, keeping standard
    output for the JSON lines.
    """
    return textFileLogObserver(sys.stderr)


def load_processor_class(spec):
    """
    @param spec: C{"module:Class"} (or C{"module.Class"}).
    @return: the class, which is a L{Component} subclass.
    @raise usage.UsageError: it cannot be imported or is not a Component.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise usage.UsageError(f"--processor must look like module:Class, not {spec!r}")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except Exception as e:
        raise usage.UsageError(f"cannot import processor {spec!r}: {type(e).__name__}: {e}")
    if not (inspect.isclass(obj) and issubclass(obj, Component)):
        raise usage.UsageError(f"processor {spec!r} is not a hermes_tx.components.Component subclass")
    return obj


class Options(usage.Options):
    synopsis = "--dsn DSN --channel NAME [--channel NAME ...] [options]"
    longdesc = (
        "LISTEN on PostgreSQL channels and run a processor for every event. "
        "The DSN may also come from HERMES_DSN; libpq's PG* variables and "
        "password file work as usual, so no password need sit on the command line."
    )
    optParameters = [
        ["dsn", "d", None, "libpq connection string or postgresql:// URI (default: $HERMES_DSN)"],
        ["processor", "p", DEFAULT_PROCESSOR, "the processor class, module:Class"],
        ["output", "o", "-", "where the processor writes, for processors that take it (- for stdout)"],
        ["backoff-limit", None, 16, "longest backoff in seconds", int],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["channels"] = []

    def opt_channel(self, name):
        """
        a channel to LISTEN on, exactly as named (repeatable)
        """
        self["channels"].append(name)

    opt_c = opt_channel

    def parseOptions(self, options=None):
        if self.parent is None:
            return usage.Options.parseOptions(self, options)
        # Under twistd, a usage error is one clear line, not twistd's whole
        # help text followed by the error.
        try:
            return usage.Options.parseOptions(self, options)
        except usage.UsageError as e:
            sys.stderr.write(f"twistd hermes: error: {e}\n")
            raise SystemExit(2)

    def postOptions(self):
        if self["dsn"] is None:
            self["dsn"] = os.environ.get("HERMES_DSN")
        if not self["dsn"]:
            raise usage.UsageError("no DSN: pass --dsn or set HERMES_DSN")
        if not self["channels"]:
            raise usage.UsageError("no channel: pass --channel NAME at least once")
        if self["backoff-limit"] < 1:
            raise usage.UsageError("--backoff-limit must be at least 1")
        try:
            dsnlib.parse(self["dsn"])
            self["channels"] = validate_channels(self["channels"])
        except InvalidConfigurationException as e:
            raise usage.UsageError(str(e))
        self["processor_class"] = load_processor_class(self["processor"])
        parent = self.parent
        if (
            parent is not None
            and self["output"] == "-"
            and parent.get("nodaemon")
            and not parent.get("logfile")
            and not parent.get("logger")
        ):
            # twistd -n logs to stdout by default; our data goes there.
            parent["logger"] = "hermes_tx.tap.stderr_log_observer"


def make_processor(cls, options):
    """
    Instantiate the processor class, giving it C{output} and
    C{backoff_limit} when its constructor takes them (the seed's
    zero-argument processors included).
    """
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs = {}
    if takes_any or "output" in params:
        kwargs["output"] = options["output"]
    if takes_any or "backoff_limit" in params:
        kwargs["backoff_limit"] = options["backoff-limit"]
    processor = cls(**kwargs)
    processor.backoff_limit = options["backoff-limit"]
    return processor


def exit_cleanly_on_signals(reactor):
    """
    Make SIGTERM and SIGINT stop the reactor without twistd re-raising the
    signal at exit.

    twistd remembers the signal that stopped it and kills itself with it
    after shutdown (exit status 143 for SIGTERM).  For a service, a requested
    stop that completed cleanly is success: exit 0.  Call once the reactor
    runs (after Twisted has installed its own handlers).
    """

    def stop(number, frame):
        name = signal.Signals(number).name
        reactor.callFromThread(_log_and_stop, reactor, name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _log_and_stop(reactor, name):
    from twisted.logger import Logger

    Logger().info("Received {signal}, stopping cleanly.", signal=name)
    if reactor.running:
        reactor.stop()


def makeService(options):
    """
    @return: a L{Client} with a listener on the channels and the processor.
    """
    from twisted.internet import reactor

    reactor.callWhenRunning(exit_cleanly_on_signals, reactor)
    client = Client(options["dsn"])
    listener = PostgresNotificationListener(
        PostgresConnector(options["dsn"]),
        options["channels"],
        backoff_limit=options["backoff-limit"],
    )
    listener.setName("listener")
    client.add_listener(listener)
    processor = make_processor(options["processor_class"], options)
    processor.setName("processor")
    client.add_processor(processor)
    return client
