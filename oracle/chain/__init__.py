"""Talking to a node: ``connection`` (connect, keys), ``rpc`` (the one raw JSON-RPC client), ``logs`` (the one
log scanner), ``send`` (the one sending path outside the daemon's submitter), ``revert`` (revert data and reject
codes in words), and the contracts' ``artifacts``, ``compiler``, ``deploy`` and local ``node``."""
