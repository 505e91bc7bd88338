"""Plain helpers the test folders share that are this project's own: no fixtures (those live in each folder's
conftest.py and, for the stack, the deployment, devices, the daemon and waiting, in the project's pytest plugin
``iotsettle.oracle.testing``, the one users get) and no tests.

- ``stack``: the repository root, and a configuration for a stack of this repository in a folder
- ``cli``: ``iotsettle`` run as a user would, with funded accounts and devices registered on chain
- ``products``: product events signed by device keys, chain time, token balances
- ``devices``: devices that sign the way the firmware does (and the ways it must not), the on-chain registry
- ``daemon``: the plugin's oracle daemon process, plus refused starts run in this process
- ``settlement``: agreements and escrows on the deployed contracts, signed events for the settler
- ``reliability``: fleets of metered agreements, daemons with relayers of their own, and the ledger of what was paid
"""
