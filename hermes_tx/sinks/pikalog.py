# -*- test-case-name: tests.test_sink_amqp -*-
"""
pika logs through the standard library's C{logging}; once an AMQP sink is
made, pika's records go to Twisted's log instead (namespace C{pika}),
scrubbed of every live AMQP sink's secrets, one line each, warnings and up
(its debug and info records are dropped), and no longer reach the
standard library's handlers: nothing unscrubbed reaches a log.
"""

import logging
import weakref

from twisted.logger import Logger, LogLevel

#: the secrets of every live AMQP sink (L{hermes_tx.sinks.urls.Secrets})
_secrets = weakref.WeakSet()
#: pika's levels as Twisted's
_LEVELS = [(logging.CRITICAL, LogLevel.critical), (logging.ERROR, LogLevel.error),
           (logging.WARNING, LogLevel.warn)]

log = Logger(namespace="pika")


class TwistedHandler(logging.Handler):
    """
    Hands pika's records to Twisted's log, scrubbed, on one line (a
    record's traceback is left out).
    """

    def emit(self, record):
        try:
            text = record.getMessage()
        except Exception:  # a record whose arguments do not fit its format
            text = str(record.msg)
        for secrets in list(_secrets):
            text = secrets.scrub(text)
        level = next(twisted for std, twisted in _LEVELS if record.levelno >= std)
        log.emit(level, "{logger}: {text}", logger=record.name,
                 text=" ".join(text.split())[:2000])


def route(secrets):
    """
    Scrub C{secrets} from pika's records while they live, and route pika's
    records to Twisted's log (the first time).
    """
    _secrets.add(secrets)
    logger = logging.getLogger("pika")
    if not any(isinstance(h, TwistedHandler) for h in logger.handlers):
        logger.addHandler(TwistedHandler(logging.WARNING))
        logger.propagate = False
