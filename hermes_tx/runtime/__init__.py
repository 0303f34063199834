"""
How components run, whatever their source: the lifecycle of a component
(L{component}), the supervisor of its runs and their restarts
(L{supervisor}, an Automat machine), one run (L{run}), the processor's
consumer loop (L{loop}) and what becomes of each event after it ran
(L{settle}), the queue between sources and processor (L{queue}), backoff
policies (L{backoff}), the gate that runs components only while the
server is the primary (L{gate}), and log-rate limits (L{loglimit}).

Nothing here knows a particular source: sources live in
L{hermes_tx.sources} and L{hermes_tx.outbox}.
"""
