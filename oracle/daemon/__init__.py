"""The oracle daemon: MQTT intake (verify → fraud rules → durable store → ack) and, on top of the store, settlement.

Modules: ``deployment`` (the chain, manifest, relayer and contracts resolved once at start-up), ``store`` (SQLite
outbox + settlement-facing API; the one mapping of an event to its row), ``rules`` (fraud rules), ``intake``
(``transport``: MQTT; ``pipeline``: verify → rules → store → ack), ``registry_follower`` (device registry mirrored
from chain events), ``planner`` (batches), ``calldata`` (batch calldata and outcome logs), ``submitter`` (sign,
broadcast, replace, fees), ``txstore`` (settlement transactions and nonces), ``tracker`` (receipts to final),
``settler`` (the settlement loop), ``metrics``, ``health``, ``service`` (the process: start-up checks, threads,
signals, status topic). The table of event kinds is ``iotsettle.oracle.protocol.kinds``.
"""
