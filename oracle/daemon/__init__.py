"""The oracle daemon: MQTT intake (verify → fraud rules → durable store → ack) and, on top of the store, settlement.

Modules: ``kinds`` (the table of event kinds: contract, batch function, outcome events, cumulative registers),
``store`` (SQLite outbox + settlement-facing API), ``rules`` (fraud rules), ``ingest`` (MQTT intake),
``registry_follower`` (device registry mirrored from chain events), ``metrics``, ``health``, ``service`` (the
process: start-up checks, threads, signals, status topic).
"""
