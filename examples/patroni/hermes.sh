#!/bin/sh
# hermes_tx on the demo cluster, from a virtual environment built on the
# system Python (/opt/hermes), each process in the background with its log
# and its JSON lines in /srv/demo.  Run as root.
TWISTD=/opt/hermes/bin/twistd
cd /srv/demo

# One hermes for the whole cluster, on the multi-host DSN: it follows
# whichever node is the primary.  NOTIFY on the channel "jobs" ...
$TWISTD -n --pidfile= hermes --dsn-file /srv/demo/cluster.dsn --channel jobs -o /srv/demo/channel.jsonl > /srv/demo/channel.log 2>&1 &
# ... and the outbox topic "jobs" (hermes-tx install first).
$TWISTD -n --pidfile= hermes --dsn-file /srv/demo/cluster.dsn --outbox jobs -o /srv/demo/outbox.jsonl > /srv/demo/outbox.log 2>&1 &

# Or one hermes per node, each watching its node's data directory.  Patroni
# makes data directories 0700 postgres: only postgres (or root) can watch
# them, so these run as postgres.
runuser -u postgres -- $TWISTD -n --pidfile= hermes --dsn-file /srv/demo/node1.dsn --watch-path /srv/demo/node1 --channel jobs -o /srv/demo/node1.jsonl > /srv/demo/node1-hermes.log 2>&1 &
runuser -u postgres -- $TWISTD -n --pidfile= hermes --dsn-file /srv/demo/node2.dsn --watch-path /srv/demo/node2 --channel jobs -o /srv/demo/node2.jsonl > /srv/demo/node2-hermes.log 2>&1 &
