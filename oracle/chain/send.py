"""Send transactions one at a time and wait for them: the one sending path outside the daemon's pipelined submitter.

Each transaction gets the next nonce from the node's ``pending`` count, EIP-1559 fees from the latest base fee,
a gas limit from an estimate (with a margin), a signature from the sending account, and a wait for its receipt.
A revert is turned into an error by the ``decode`` function the caller passes (revert data → the exception to
raise); without one it is named by its selector.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import requests
from eth_account.signers.local import LocalAccount
from iotsettle.oracle.chain.connection import Chain
from iotsettle.oracle.chain.revert import ErrorDecoder, revert_data
from iotsettle.oracle.protocol.errors import ChainError
from web3.contract.contract import ContractFunction
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    TimeExhausted,
    Web3Exception,
)
from web3.types import TxParams

log = logging.getLogger(__name__)

#: revert data (None when the node gave none) → the exception to raise for it
Decode = Callable[[bytes | None], ChainError]

_RPC_ERRORS = (requests.RequestException, Web3Exception, ValueError)


def fees(chain: Chain, base_multiple: int = 2) -> dict[str, int]:
    """``maxPriorityFeePerGas`` (1 gwei; 1 wei on a local chain) and ``maxFeePerGas`` = multiple × base fee + tip."""
    base = int(chain.w3.eth.get_block("latest").get("baseFeePerGas", 0))
    tip = 1 if chain.is_local else 10**9
    return {"maxPriorityFeePerGas": tip, "maxFeePerGas": base_multiple * base + tip}


def call_revert_data(exc: BaseException) -> bytes | None:
    """Revert data as anvil/geth return it (``revert.revert_data``), or as ganache does for ``eth_estimateGas``:
    ``{"result": "0x…", "programCounter": …}``."""
    data = revert_data(exc)
    if data is None:
        raw = getattr(exc, "data", None)
        if isinstance(raw, dict) and isinstance(raw.get("result"), str) and raw["result"].startswith("0x"):
            return bytes.fromhex(raw["result"][2:])
    return data


def would_revert(decoder: ErrorDecoder) -> Decode:
    """A ``decode`` that names the revert with ``decoder`` (custom errors with their arguments, ``Error(string)``,
    ``Panic``): ``the transaction would revert: NotDeviceOwner(device=0x…, caller=0x…)``."""
    return lambda data: ChainError(f"the transaction would revert: {decoder.decode(data).sentence}")


def _custom_error_name(exc: ContractCustomError) -> str:
    """A readable name for a custom error raised while estimating; the raw data when it is unknown."""
    data = exc.data if isinstance(exc.data, str) else str(exc.message)
    return f"custom error {data[:10]}"


def _would_revert(exc: ContractLogicError, decode: Decode | None) -> ChainError:
    if decode is not None:
        data = call_revert_data(exc)
        if data or isinstance(exc, ContractCustomError | ContractPanicError):
            return decode(data)
    if isinstance(exc, ContractCustomError):
        return ChainError(f"the transaction would revert: {_custom_error_name(exc)}")
    return ChainError(f"the transaction would revert: {exc.message or exc}")


def send(
    chain: Chain,
    account: LocalAccount,
    tx: Mapping[str, Any],
    timeout: float = 60.0,
    decode: Decode | None = None,
) -> dict[str, Any]:
    """Fill nonce, gas and EIP-1559 fees, sign, send and wait for the receipt; raises ChainError when reverted."""
    w3 = chain.w3
    full: dict[str, Any] = {"from": account.address, "chainId": chain.chain_id, **tx}
    full.setdefault("nonce", w3.eth.get_transaction_count(account.address, "pending"))
    try:
        if "gas" not in full:
            # web3 types the transaction as its TxParams TypedDict; `full` holds the same keys as a plain dict.
            full["gas"] = int(w3.eth.estimate_gas(cast(TxParams, full)) * 1.2) + 10_000
    except ContractLogicError as exc:
        raise _would_revert(exc, decode) from None
    except _RPC_ERRORS as exc:
        raise ChainError(f"gas estimation failed: {exc}") from None
    if "maxFeePerGas" not in full and "gasPrice" not in full:
        full.update(fees(chain))
    signed = account.sign_transaction(full)
    try:
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout)
    except TimeExhausted:
        raise ChainError(f"transaction {signed.hash.to_0x_hex()} not mined within {timeout:.0f} s") from None
    except _RPC_ERRORS as exc:
        message = str(exc)
        if "insufficient funds" in message.lower():
            raise ChainError(f"{account.address} has not enough ETH to pay for this transaction") from None
        raise ChainError(f"sending the transaction failed: {message}") from None
    if receipt["status"] != 1:
        raise ChainError(f"transaction {tx_hash.to_0x_hex()} reverted in block {receipt['blockNumber']}")
    return dict(receipt)


def send_call(
    chain: Chain, account: LocalAccount, call: ContractFunction, *, value: int = 0, decode: Decode | None = None
) -> dict[str, Any]:
    """Estimate a contract call (a revert raises what ``decode`` makes of it), then sign, send and wait for the
    receipt."""
    params: dict[str, Any] = {"from": account.address, "value": value}
    try:
        gas = call.estimate_gas(cast(TxParams, params))
    except ContractLogicError as exc:
        raise _would_revert(exc, decode) from None
    except _RPC_ERRORS as exc:
        message = str(exc)
        if "insufficient funds" in message.lower():
            balance = chain.w3.eth.get_balance(account.address)
            raise ChainError(
                f"{account.address} has not enough ETH for this transaction "
                f"(balance {balance / 1e18:g} ETH{f', value {value / 1e18:g} ETH' if value else ''})"
            ) from None
        raise ChainError(f"cannot prepare the transaction: {message}") from None
    # Everything filled here so building the transaction makes no further RPC round trips (~10 ms each).
    tx = call.build_transaction(
        cast(
            TxParams,
            {
                **params,
                "gas": int(gas * 1.2) + 10_000,
                "chainId": chain.chain_id,
                "nonce": chain.w3.eth.get_transaction_count(account.address, "pending"),
                **fees(chain),
            },
        )
    )
    return send(chain, account, tx)


def send_many(
    chain: Chain, account: LocalAccount, calls: Sequence[ContractFunction], *, gas: int, decode: Decode | None = None
) -> list[dict[str, Any]]:
    """Send ``calls`` back to back at consecutive nonces with a fixed gas limit, then wait for every receipt.

    For bulk set-up (a demo fleet): one round trip per transaction instead of an estimate and a wait each. A call
    that reverts is replayed with ``eth_call`` so the error is what ``decode`` makes of it, as for ``send_call``.
    """
    if not calls:
        return []
    w3 = chain.w3
    fee = fees(chain, base_multiple=3)
    nonce = w3.eth.get_transaction_count(account.address, "pending")
    hashes = []
    for offset, call in enumerate(calls):
        tx = call.build_transaction(
            cast(
                TxParams,
                {"from": account.address, "gas": gas, "chainId": chain.chain_id, "nonce": nonce + offset, **fee},
            )
        )
        try:
            # eth_account types the transaction as a plain dict of its own value types; web3 built it as TxParams.
            signed = account.sign_transaction(cast(dict[str, Any], tx))
            hashes.append(w3.eth.send_raw_transaction(signed.raw_transaction))
        except _RPC_ERRORS as exc:
            raise ChainError(f"sending transaction {offset + 1} of {len(calls)} failed: {exc}") from None
    receipts = []
    for call, tx_hash in zip(calls, hashes, strict=True):
        try:
            receipt: dict[str, Any] = dict(w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60))
        except _RPC_ERRORS as exc:
            raise ChainError(f"transaction {tx_hash.to_0x_hex()} was not mined: {exc}") from None
        if receipt["status"] != 1:
            try:
                call.call({"from": account.address}, block_identifier=receipt["blockNumber"] - 1)
            except ContractLogicError as exc:
                if decode is not None:
                    raise decode(call_revert_data(exc)) from None
                raise _would_revert(exc, None) from None
            raise ChainError(
                f"transaction {tx_hash.to_0x_hex()} reverted in block {receipt['blockNumber']} (out of gas at {gas}?)"
            )
        receipts.append(receipt)
    return receipts
