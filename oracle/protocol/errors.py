"""One exception family for the whole toolkit. The CLI prints these as one line and exits non-zero."""

from __future__ import annotations


class IotSettleError(Exception):
    """Root of every error iotsettle raises on purpose (bad input, unreachable service, refused action)."""


class ConfigError(IotSettleError):
    """The configuration file or an IOTSETTLE_* variable is invalid."""


class ToolchainError(IotSettleError):
    """A required binary (solc, anvil, mosquitto, forge) is missing or unusable."""


class CompileError(IotSettleError):
    """The Solidity compiler reported errors."""


class ChainError(IotSettleError):
    """The RPC endpoint is unreachable, on the wrong chain, or refused a transaction."""


class DeploymentError(IotSettleError):
    """A deployment manifest is missing, stale or does not match the chain."""


class KeyFileError(IotSettleError):
    """A key is missing, unreadable, badly protected or the password is wrong."""


class SignerError(IotSettleError):
    """The remote signer did not answer, refused, or returned a signature of something other than what was asked."""


class NodeError(IotSettleError):
    """A managed local service (anvil, mosquitto) could not be started or stopped."""


class SignatureError(IotSettleError):
    """A device signature is malformed, malleable or does not recover."""


class ProtocolError(IotSettleError):
    """A device message does not follow docs/PROTOCOL.md (schema, size, encoding)."""


class StoreError(IotSettleError):
    """The oracle's durable store is unusable, or an event is not in the state an operation needs."""
