"""Contract operations as plain functions over web3, shared by the CLI, the demo and the tests.

Each module covers one contract (``escrow``, ``billing``, ``registry``, ``token``…) or one concern (``events``
reads a contract's decoded logs, ``token_info`` what a token is, ``audit`` re-derives settlement history from
event logs, ``sentences`` turns reverts into sentences, ``tx`` sends through ``iotsettle.oracle.chain.send``). Every
function takes an :class:`~iotsettle.oracle.ops.context.OpsContext` (chain, manifest, sending account) and raises the
``iotsettle.oracle.protocol.errors`` family with a one-line message a user can act on.
"""
