"""
C{python -m hermes_tx.outbox}: the C{hermes-tx} command.
"""

from hermes_tx.outbox.cli import main

main()
