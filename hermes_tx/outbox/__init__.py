"""
The durable outbox, PostgreSQL side: a schema of its own (C{hermes} by
default) holding the outbox and its dead letters, C{emit()} for
applications, capture triggers for tables, and the statements a consumer
runs (L{hermes_tx.outbox.sql}).

  - L{hermes_tx.outbox.schema}: install and upgrade (versioned migrations);
  - L{hermes_tx.outbox.sql}: claim (and claim_within, in a byte budget:
    L{hermes_tx.outbox.budget}), ack, release, dead_letter, extend, stats,
    the wake-up channel;
  - L{hermes_tx.outbox.capture}: capture and uncapture tables;
  - L{hermes_tx.outbox.admin}: status and dead letters;
  - L{hermes_tx.outbox.privileges}: the rights writers, consumers and
    operators need, and the line that names a missing one;
  - L{hermes_tx.outbox.cli}: the C{hermes-tx} command
    (L{hermes_tx.outbox.commands}: what each of its commands does).
"""
