"""
The C{twistd hermes} plugin.  Kept tiny: twistd imports every plugin module
to list subcommands, so the real code is imported only when used.
"""

from twisted.application.service import ServiceMaker

hermes = ServiceMaker(
    "hermes",
    "hermes_tx.twistd",
    "LISTEN on PostgreSQL channels and process every notification",
    "hermes",
)
