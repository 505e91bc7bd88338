"""Send transactions one at a time and wait for them: the one sending path outside the daemon's pipelined submitter.

Each transaction gets the next nonce from the node's ``pending`` count, EIP-1559 fees from the latest base fee,
a gas limit from an estimate (with a margin), a signature from the sending account, and a wait for its receipt.
When the node refuses the nonce because another sender of the same account took it in the meantime ("nonce too
low", "replacement transaction underpriced", ganache's "doesn't have the correct nonce"), the transaction is signed
again at the node's new count and sent once more. A revert is turned into an error by the ``decode`` function the
caller passes (revert data → the exception to raise); without one it is named by its selector. Any other refusal
is the node's message in one sentence (``iotsettle.oracle.chain.rpc.node_message``), never its stack.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import requests
from iotsettle.oracle.chain.connection import Chain
from iotsettle.oracle.chain.revert import ErrorDecoder, revert_data
from iotsettle.oracle.chain.rpc import node_message
from iotsettle.oracle.chain.signer import Signer
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
#: how nodes say that the nonce a transaction was signed with is taken (anvil/geth, their pools, ganache)
NONCE_TAKEN = (
    "nonce too low",
    "nonce is too low",
    "replacement transaction underpriced",
    "replacement underpriced",
    "doesn't have the correct nonce",
)
_ACCOUNT_NONCE = re.compile(r"account has nonce of:? (\d+)")


def nonce_taken(message: str) -> bool:
    """True when a node's refusal says the transaction's nonce is no longer the account's next one."""
    lowered = message.lower()
    return any(needle in lowered for needle in NONCE_TAKEN)


def _next_nonce(chain: Chain, account: Signer, used: int, message: str) -> int:
    """The nonce to sign again with after ``used`` was refused: the account's count as ganache states it in its
    refusal, else the node's pending count (past ``used``: the pool may not show the transaction that took it)."""
    stated = _ACCOUNT_NONCE.search(message)
    if stated:
        return int(stated.group(1))
    return max(int(chain.w3.eth.get_transaction_count(account.address, "pending")), used + 1)


def _send_failed(account: Signer, message: str) -> ChainError:
    if "insufficient funds" in message.lower():
        return ChainError(f"{account.address} has not enough ETH to pay for this transaction")
    return ChainError(f"sending the transaction failed: {message}")


def _broadcast(chain: Chain, account: Signer, tx: dict[str, Any], renonce: bool) -> tuple[Any, dict[str, Any]]:
    """Sign and send ``tx``; with ``renonce``, once more at a fresh nonce when the node says its nonce is taken.
    Returns the transaction hash and the transaction as sent."""
    try:
        return chain.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction), tx
    except _RPC_ERRORS as exc:
        message = node_message(exc)
        if not (renonce and nonce_taken(message)):
            raise _send_failed(account, message) from None
    fresh = _next_nonce(chain, account, int(tx["nonce"]), message)
    log.info("nonce %s of %s was taken (%s); sending at nonce %d", tx["nonce"], account.address, message, fresh)
    tx = {**tx, "nonce": fresh}
    try:
        return chain.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction), tx
    except _RPC_ERRORS as exc:
        raise _send_failed(account, node_message(exc)) from None


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
    account: Signer,
    tx: Mapping[str, Any],
    timeout: float = 60.0,
    decode: Decode | None = None,
) -> dict[str, Any]:
    """Fill nonce, gas and EIP-1559 fees, sign, send and wait for the receipt; raises ChainError when reverted."""
    w3 = chain.w3
    full: dict[str, Any] = {"from": account.address, "chainId": chain.chain_id, **tx}
    renonce = "nonce" not in full  # a caller that chose the nonce keeps it
    full.setdefault("nonce", w3.eth.get_transaction_count(account.address, "pending"))
    try:
        if "gas" not in full:
            # web3 types the transaction as its TxParams TypedDict; `full` holds the same keys as a plain dict.
            full["gas"] = int(w3.eth.estimate_gas(cast(TxParams, full)) * 1.2) + 10_000
    except ContractLogicError as exc:
        raise _would_revert(exc, decode) from None
    except _RPC_ERRORS as exc:
        raise ChainError(f"gas estimation failed: {node_message(exc)}") from None
    if "maxFeePerGas" not in full and "gasPrice" not in full:
        full.update(fees(chain))
    return _mined(chain, account, full, timeout, renonce)


def _mined(chain: Chain, account: Signer, tx: dict[str, Any], timeout: float, renonce: bool) -> dict[str, Any]:
    """Broadcast a filled transaction and wait for its receipt; raises ChainError when it reverted."""
    tx_hash, tx = _broadcast(chain, account, tx, renonce)
    try:
        receipt = chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout)
    except TimeExhausted:
        raise ChainError(
            f"transaction {tx_hash.to_0x_hex()} (nonce {tx['nonce']}) not mined within {timeout:.0f} s"
        ) from None
    except _RPC_ERRORS as exc:
        raise ChainError(f"waiting for transaction {tx_hash.to_0x_hex()} failed: {node_message(exc)}") from None
    if receipt["status"] != 1:
        raise ChainError(f"transaction {tx_hash.to_0x_hex()} reverted in block {receipt['blockNumber']}")
    return dict(receipt)


def send_call(
    chain: Chain, account: Signer, call: ContractFunction, *, value: int = 0, decode: Decode | None = None
) -> dict[str, Any]:
    """Estimate a contract call (a revert raises what ``decode`` makes of it), then sign, send and wait for the
    receipt."""
    params: dict[str, Any] = {"from": account.address, "value": value}
    try:
        gas = call.estimate_gas(cast(TxParams, params))
    except ContractLogicError as exc:
        raise _would_revert(exc, decode) from None
    except _RPC_ERRORS as exc:
        message = node_message(exc)
        if "insufficient funds" in message.lower():
            balance = chain.w3.eth.get_balance(account.address)
            raise ChainError(
                f"{account.address} has not enough ETH for this transaction "
                f"(balance {balance / 1e18:g} ETH{f', value {value / 1e18:g} ETH' if value else ''})"
            ) from None
        raise ChainError(f"cannot prepare the transaction: {message}") from None
    # Everything filled here so building the transaction makes no further RPC round trips (~10 ms each).
    # web3 types transactions as its TxParams TypedDict; the sending path handles them as plain dicts.
    tx: dict[str, Any] = dict(
        call.build_transaction(
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
    )
    return _mined(chain, account, tx, 60.0, renonce=True)


def send_many(
    chain: Chain, account: Signer, calls: Sequence[ContractFunction], *, gas: int, decode: Decode | None = None
) -> list[dict[str, Any]]:
    """Send ``calls`` back to back at consecutive nonces with a fixed gas limit, then wait for every receipt.

    For bulk set-up (a demo fleet): one round trip per transaction instead of an estimate and a wait each. A call
    that reverts is replayed with ``eth_call`` so the error is what ``decode`` makes of it, as for ``send_call``.
    """
    if not calls:
        return []
    w3 = chain.w3
    fee = fees(chain, base_multiple=3)
    nonce = int(w3.eth.get_transaction_count(account.address, "pending"))
    hashes = []
    renonce = True
    for offset, call in enumerate(calls):
        tx: dict[str, Any] = dict(
            call.build_transaction(
                cast(
                    TxParams,
                    {"from": account.address, "gas": gas, "chainId": chain.chain_id, "nonce": nonce + offset, **fee},
                )
            )
        )
        try:
            tx_hash, sent = _broadcast(chain, account, tx, renonce)
        except ChainError as exc:
            raise ChainError(f"transaction {offset + 1} of {len(calls)}: {exc}") from None
        if sent["nonce"] != tx["nonce"]:  # another sender took nonces: the rest follow on from the fresh one
            nonce, renonce = int(sent["nonce"]) - offset, False
        hashes.append(tx_hash)
    receipts = []
    for call, tx_hash in zip(calls, hashes, strict=True):
        try:
            receipt: dict[str, Any] = dict(w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60))
        except _RPC_ERRORS as exc:
            raise ChainError(f"transaction {tx_hash.to_0x_hex()} was not mined: {node_message(exc)}") from None
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
