# -*- test-case-name: tests.test_tap -*-
"""
C{twistd hermes}: command-line options and the service they make.

    twistd [-n] hermes --dsn DSN --channel NAME [--channel NAME ...]
        [--processor module:Class] [--output PATH|-] [--backoff-limit N]
        [--watch-path DIR] [--failover-file NAME ...]
        [--role-check-interval SECONDS] [--max-backoff SECONDS]
        [--liveness-timeout SECONDS] [--shutdown-timeout SECONDS]
        [--payload-format text|json] [--queue-size N]
        [--status-port PORT [--status-interface ADDRESS]]
"""

import importlib
import inspect
import os
import signal
import sys

from twisted.application import service
from twisted.logger import textFileLogObserver
from twisted.python import usage

from hermes_tx import dsn as dsnlib
from hermes_tx.client import Client
from hermes_tx.components import Component
from hermes_tx.connectors import PostgresConnector
from hermes_tx.events import PAYLOAD_FORMATS
from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.channels import validate_channels
from hermes_tx.listeners import PostgresNotificationListener
from hermes_tx.status import StatusService

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


def _typed(name, kind):
    """
    @return: a coercer for option C{--name} whose error names the option.
    """
    noun = "a whole number" if kind is int else "a number"

    def coerce(value):
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"--{name} must be {noun}, not {value!r}") from None

    return coerce


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
        ["backoff-limit", None, 16, "longest backoff in seconds", _typed("backoff-limit", int)],
        ["watch-path", None, None, "the server's data directory, watched for failover files"],
        ["role-check-interval", None, 1.0, "seconds between role checks", _typed("role-check-interval", float)],
        ["max-backoff", None, 2.0, "longest wait between role checks while no host answers", _typed("max-backoff", float)],
        ["liveness-timeout", None, 10.0,
         "seconds a liveness probe may go unanswered before reconnecting", _typed("liveness-timeout", float)],
        ["shutdown-timeout", None, 10.0,
         "seconds a stop waits for the event in progress", _typed("shutdown-timeout", float)],
        ["payload-format", None, "text", "text, or json to decode payloads for processors"],
        ["queue-size", None, 10000,
         "events waiting for the processor before reading pauses", _typed("queue-size", int)],
        ["status-port", None, None, "serve /health, /ready and /metrics on this TCP port", _typed("status-port", int)],
        ["status-interface", None, "127.0.0.1", "the address the status port listens on"],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["channels"] = []
        self["failover-files"] = []

    def opt_failover_file(self, name):
        """
        a failover file under --watch-path (repeatable; replaces the defaults)
        """
        self["failover-files"].append(name)

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
        if not self["role-check-interval"] > 0:
            raise usage.UsageError("--role-check-interval must be more than 0")
        if not self["max-backoff"] >= 0.1:
            raise usage.UsageError("--max-backoff must be at least 0.1")
        for name in ("liveness-timeout", "shutdown-timeout"):
            if not self[name] > 0:
                raise usage.UsageError(f"--{name} must be more than 0")
        if self["queue-size"] < 1:
            raise usage.UsageError("--queue-size must be at least 1")
        if self["payload-format"] not in PAYLOAD_FORMATS:
            raise usage.UsageError("--payload-format must be text or json")
        port = self["status-port"]
        if port is not None and not 0 <= port <= 65535:
            raise usage.UsageError("--status-port must be a TCP port number")
        path = self["watch-path"]
        if path is not None and not os.path.isdir(path):
            raise usage.UsageError(f"--watch-path {path!r} is not a directory")
        if self["failover-files"] and path is None:
            raise usage.UsageError("--failover-file needs --watch-path")
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
    zero-argument processors included); C{backoff_limit} and
    C{shutdown_timeout} are set on it in any case.
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
    processor.shutdown_timeout = options["shutdown-timeout"]
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
    @return: a L{service.MultiService} holding the L{Client} (named
        C{"client"}, with a listener on the channels and the processor) and,
        with C{--status-port}, the L{StatusService} (named C{"status"}).
    """
    from twisted.internet import reactor

    reactor.callWhenRunning(exit_cleanly_on_signals, reactor)
    client = Client(
        options["dsn"],
        watch_path=options["watch-path"],
        failover_files=options["failover-files"] or None,
        role_check_interval=options["role-check-interval"],
        max_backoff=options["max-backoff"],
        queue_size=options["queue-size"],
    )
    client.setName("client")
    listener = PostgresNotificationListener(
        PostgresConnector(options["dsn"]),
        options["channels"],
        backoff_limit=options["backoff-limit"],
        liveness_timeout=options["liveness-timeout"],
        payload_format=options["payload-format"],
    )
    listener.setName("listener")
    client.add_listener(listener)
    processor = make_processor(options["processor_class"], options)
    processor.setName("processor")
    client.add_processor(processor)
    top = service.MultiService()
    client.setServiceParent(top)
    if options["status-port"] is not None:
        status = StatusService(client, options["status-port"], options["status-interface"])
        status.setName("status")
        status.setServiceParent(top)
    return top
