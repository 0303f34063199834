"""
Sources that hold a PostgreSQL connection and put events on the queue:
what they share (L{component}: following the primary, logging lost
connections; L{run}: one connection from connect to loss) and the
listener's run (L{listening}).  The listener component itself is
L{hermes_tx.listeners.PostgresNotificationListener}; the outbox consumer
is L{hermes_tx.outbox.consumer.OutboxConsumer}.
"""
