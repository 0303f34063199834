"""
C{twistd hermes}: its options (L{options}), the service they make
(L{service}), loading the processor class (L{processor}), and what the
process does for its operator: signals, log files, exit statuses
(L{process}).  The plugin (C{twisted/plugins/hermes_plugin.py}) names
this package: twistd finds L{Options} and L{makeService} here.
"""

from hermes_tx.twistd.options import Options
from hermes_tx.twistd.service import makeService

__all__ = ["Options", "makeService"]
