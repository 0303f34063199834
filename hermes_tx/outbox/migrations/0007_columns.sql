-- hermes_tx outbox, version 7: PLACEHOLDER on the backfill branch only.
-- The column selection branch brings the real 0007_columns.sql; at merge
-- its file replaces this one (which changes nothing).
SELECT count(*) FROM {schema}.migrations;
