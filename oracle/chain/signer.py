"""Who signs transactions: the ``Signer`` interface, with a key in this process (eth-account's ``LocalAccount``, from
a keystore or the environment) as one implementation and ``RemoteSigner`` as the other.

``RemoteSigner`` asks a signer outside the process over JSON-RPC ``eth_signTransaction`` (``[chain] signer =
"remote"``): the protocol of Clef, Web3Signer and of geth/anvil for their unlocked accounts. The private key never
enters this process. What comes back is checked before anything is sent: it must be signed by the configured
account and be the transaction that was asked for (nonce, recipient, value, data, gas, fees, chain), so a signer
that answers with something else is an error, never a broadcast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from eth_account.types import TransactionDictType
from eth_hash.auto import keccak
from eth_typing import ChecksumAddress
from eth_utils import is_address, to_checksum_address
from hexbytes import HexBytes
from iotsettle.oracle.chain.rpc import NodeRefused, RpcClient
from iotsettle.oracle.config import endpoint
from iotsettle.oracle.protocol.errors import ChainError, SignerError

#: transaction fields sent to the signer, as JSON-RPC quantities, and compared with what it signed
_QUANTITIES = ("nonce", "gas", "value", "chainId", "maxFeePerGas", "maxPriorityFeePerGas", "gasPrice")


class SignedTx(Protocol):
    @property
    def raw_transaction(self) -> bytes: ...

    @property
    def hash(self) -> bytes: ...


class Signer(Protocol):
    """What the sending paths need of an account: its address and a signature of a transaction dict."""

    @property
    def address(self) -> ChecksumAddress: ...

    def sign_transaction(self, transaction_dict: TransactionDictType, /) -> SignedTx: ...


@dataclass(frozen=True)
class RemoteSigned:
    raw_transaction: bytes
    hash: bytes


def _bytes(value: Any) -> bytes:
    """Bytes given as bytes or as 0x-hex (transaction data and addresses arrive either way)."""
    return bytes(value) if isinstance(value, bytes) else bytes.fromhex(str(value or "").removeprefix("0x"))


class RemoteSigner:
    """Signs with ``eth_signTransaction`` at ``url`` for ``address``; see the module docstring."""

    def __init__(self, url: str, address: str, timeout: float = 10.0) -> None:
        if not is_address(address):
            raise SignerError(f"the remote signer's account {address!r} is not an address")
        self._address = to_checksum_address(address)
        self._rpc = RpcClient(url=url, timeout=timeout)
        self.where = endpoint(url)  # printable: no path or query, where hosted signers keep tokens

    @property
    def address(self) -> ChecksumAddress:
        return self._address

    def __repr__(self) -> str:
        return f"RemoteSigner({self._address} at {self.where})"

    def lists_account(self) -> bool:
        """Whether the signer lists its account in ``eth_accounts`` (Clef may first ask its operator to approve);
        raises SignerError when it does not answer."""
        try:
            accounts = self._rpc.call("eth_accounts", [])
        except NodeRefused:
            return False
        except ChainError:
            raise SignerError(f"the remote signer at {self.where} does not answer") from None
        return isinstance(accounts, list) and self._address.lower() in (str(a).lower() for a in accounts)

    def request(self, tx: Mapping[str, Any]) -> dict[str, Any]:
        """The ``eth_signTransaction`` parameter for ``tx``: quantities as hex, the data as ``data`` and ``input``."""
        params: dict[str, Any] = {"from": self._address}
        for name in _QUANTITIES:
            if name in tx:
                params[name] = hex(int(tx[name]))
        if tx.get("to"):
            params["to"] = to_checksum_address(str(tx["to"]))
        params["data"] = params["input"] = "0x" + _bytes(tx.get("data", b"")).hex()
        if "maxFeePerGas" in tx:
            params["type"] = "0x2"
        return params

    def sign_transaction(self, transaction_dict: TransactionDictType, /) -> RemoteSigned:
        try:
            result = self._rpc.call("eth_signTransaction", [self.request(transaction_dict)])
        except NodeRefused as exc:
            raise SignerError(f"the remote signer at {self.where} refused to sign: {exc.node_message}") from None
        except ChainError:
            raise SignerError(f"the remote signer at {self.where} does not answer") from None
        raw_hex = result.get("raw") if isinstance(result, dict) else result  # Clef/geth: {raw, tx}; others: raw
        try:
            raw = bytes.fromhex(str(raw_hex).removeprefix("0x"))
            signer = Account.recover_transaction(raw)
        except (ValueError, TypeError) as exc:
            raise SignerError(f"the remote signer at {self.where} returned no signed transaction ({exc})") from None
        if signer != self._address:
            raise SignerError(f"the remote signer at {self.where} signed as {signer}, not as {self._address}")
        self._check_same(transaction_dict, raw)
        return RemoteSigned(raw, keccak(raw))

    def _check_same(self, asked: Mapping[str, Any], raw: bytes) -> None:
        if raw[:1] not in (b"\x01", b"\x02"):
            if "maxFeePerGas" in asked:
                raise SignerError(f"the remote signer at {self.where} returned a legacy transaction for a typed one")
            return  # a legacy transaction asked for (gasPrice): its sender was checked, its fields are not decoded
        signed = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
        differs = [name for name in _QUANTITIES if name in asked and int(signed.get(name, -1)) != int(asked[name])]
        if _bytes(signed.get("to")) != _bytes(asked.get("to")):
            differs.append("to")
        if _bytes(signed.get("data")) != _bytes(asked.get("data")):
            differs.append("data")
        if differs:
            raise SignerError(
                f"the remote signer at {self.where} signed a different transaction ({', '.join(differs)} changed)"
            )
