"""
Following the primary: asking every host its role (L{roles}), when to ask
(L{monitor}, an Automat machine), the failover files of a watched data
directory and the quick checks after they change (L{files}), and what is
logged of it (L{log}).  L{hermes_tx.client.Client} puts them together:
components run only while their server is the primary, and connect to the
host found to be the primary.
"""
