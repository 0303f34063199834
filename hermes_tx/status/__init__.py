"""
The status endpoint: C{/health}, C{/ready} and C{/metrics} for a Client,
under C{twistd hermes --status-port} or in an application of your own.

  - L{hermes_tx.status.site}: the HTTP resources and L{StatusService};
  - L{hermes_tx.status.readiness}: whether the Client can deliver now;
  - L{hermes_tx.status.metrics}: the Client's figures for Prometheus.
"""

from hermes_tx.status.site import StatusService, make_registry, make_resource, make_site

__all__ = ["StatusService", "make_site", "make_resource", "make_registry"]
