"""
Talking to PostgreSQL: connection strings and their secrets (L{dsn},
L{dsncheck}), the hosts of a multi-host DSN (L{hosts}), one connection
attempt (L{attempt}) waiting on libpq's socket without holding a closed
descriptor (L{socketwait}), the txpostgres connection with its sharp edges
filed down (L{connection}), the liveness probe of an idle connection
(L{liveness}), and channel names for LISTEN (L{channels}).

The public entry point is L{hermes_tx.connectors.PostgresConnector}.
"""
