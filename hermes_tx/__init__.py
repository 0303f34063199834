"""
hermes_tx: Hermes, the Postgres-talking, event-driven, failure-handling
library, as Twisted services.

A L{hermes_tx.client.Client} keeps PostgreSQL sources (a notification
listener, an outbox consumer) and a user processor alive.  The documentation
site (C{scripts/docs}, sources under C{docs/}) is the tour.
"""

__version__ = "0.1.0"
