"""Integration testing against a private local stack, for this project's tests and for its users' own.

``iotsettle.oracle.testing.plugin`` is a pytest plugin (the distribution registers it under the ``pytest11`` entry
point ``iotsettle``, so installing iotsettle is enough to get its fixtures; docs/TESTING.md lists them). The other
modules are the plain code behind the fixtures, usable without pytest:

- ``stack``: anvil + mosquitto on free loopback ports, and the contracts compiled and deployed on them
- ``accounts``: the node's funded development accounts, and fresh accounts funded from them
- ``devices``: devices registered on chain that sign events with the device SDK, and a device-side MQTT client
- ``daemon``: the oracle daemon as a real process
- ``wait``: polling for a condition, and for a signed event to be paid on chain
"""
