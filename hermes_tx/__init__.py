"""
hermes_tx: Hermes, the Postgres-talking, event-driven, failure-handling
library, as Twisted services.

A L{hermes_tx.client.Client} keeps a PostgreSQL notification listener and a
user processor alive.  See README.rst for a tour.
"""

__version__ = "0.1.0"
