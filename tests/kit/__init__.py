"""Plain helpers the test folders share: no fixtures (those live in each folder's conftest.py) and no tests.

- ``stack``: the repository root, a configuration for a stack in a folder, a deployment, an anvil of a test's own
- ``cli``: ``iotsettle`` run as a user would, with funded accounts and devices registered on chain
- ``products``: product events signed by device keys, chain time, token balances
- ``devices``: devices that sign the way the firmware does, the on-chain registry, a device-side MQTT client
- ``wait``: polling for a condition
- ``daemon``: the oracle daemon as a real process
- ``settlement``: agreements and escrows on the deployed contracts, signed events for the settler
- ``reliability``: fleets of metered agreements, daemons with relayers of their own, and the ledger of what was paid
"""
