"""The device SDK: keys, signing, the offline buffer, the MQTT publisher and the fleet simulator.

Firmware that is not written in Python follows docs/PROTOCOL.md; this package is the reference implementation.
"""
