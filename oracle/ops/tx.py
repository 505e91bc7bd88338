"""Send one contract call: pre-flight it so a revert becomes a sentence, then send through ``iotsettle.oracle.chain.connection.send``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import requests
from web3.contract.contract import ContractFunction
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    LogTopicError,
    MismatchedABI,
    Web3Exception,
)

from iotsettle.oracle.chain.connection import send
from iotsettle.oracle.chain.revert import revert_data
from iotsettle.oracle.protocol.errors import ChainError
from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.ops.sentences import DecodedRevert, RevertDecoder

log = logging.getLogger(__name__)


class RevertedError(ChainError):
    """A transaction would revert (or did); ``revert`` holds the decoded error."""

    def __init__(self, revert: DecodedRevert) -> None:
        super().__init__(revert.sentence)
        self.revert = revert


@dataclass(frozen=True)
class TxResult:
    tx_hash: str
    block: int
    gas_used: int
    receipt: dict[str, Any]


def decoder(ctx: OpsContext, contract: str | None = None) -> RevertDecoder:
    """A decoder over every deployed ABI. Contracts share error signatures (``TooEarly``, ``WrongStatus``…)
    with different argument names; the called ``contract``'s ABI goes last so its names win."""
    abis = dict(ctx.abis)
    if contract in abis:
        abis[contract] = abis.pop(contract)
    return RevertDecoder.from_abis(abis)


def _revert_data(exc: Exception) -> bytes | None:
    """Revert data as anvil/geth return it (``iotsettle.oracle.chain.revert.revert_data``), or as ganache does for
    ``eth_estimateGas``: ``{"result": "0x…", "programCounter": …}``."""
    data = revert_data(exc)
    if data is None:
        raw = getattr(exc, "data", None)
        if isinstance(raw, dict) and isinstance(raw.get("result"), str) and raw["result"].startswith("0x"):
            return bytes.fromhex(raw["result"][2:])
    return data


def transact(ctx: OpsContext, call: ContractFunction, contract: str, *, value: int = 0) -> TxResult:
    """Estimate (decoding any revert into a RevertedError), then sign, send and wait for the receipt."""
    account = ctx.require_sender()
    params: dict[str, Any] = {"from": account.address, "value": value}
    try:
        gas = call.estimate_gas(params)
    except ContractLogicError as exc:
        data = _revert_data(exc)
        if data or isinstance(exc, ContractCustomError | ContractPanicError):
            raise RevertedError(decoder(ctx, contract).decode(data, contract, ctx)) from None
        raise ChainError(f"the transaction would revert: {exc.message or exc}") from None
    except (requests.RequestException, Web3Exception, ValueError) as exc:
        message = str(exc)
        if "insufficient funds" in message.lower():
            balance = ctx.w3.eth.get_balance(account.address)
            raise ChainError(f"{account.address} has not enough ETH for this transaction "
                             f"(balance {balance / 1e18:g} ETH{f', value {value / 1e18:g} ETH' if value else ''})") from None
        raise ChainError(f"cannot prepare the transaction: {message}") from None
    # Everything filled here so building the transaction makes no further RPC round trips (~10 ms each).
    base = int(ctx.w3.eth.get_block("latest").get("baseFeePerGas", 0))
    tip = 1 if ctx.chain.is_local else 10**9
    tx = call.build_transaction({**params, "gas": int(gas * 1.2) + 10_000, "chainId": ctx.chain.chain_id,
                                 "nonce": ctx.w3.eth.get_transaction_count(account.address, "pending"),
                                 "maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * base + tip})
    receipt = send(ctx.chain, account, tx)
    log.info("%s.%s mined in block %s (gas %s)", contract, call.fn_name, receipt["blockNumber"], receipt["gasUsed"])
    return TxResult(receipt["transactionHash"].to_0x_hex(), int(receipt["blockNumber"]), int(receipt["gasUsed"]), receipt)


def events_in(ctx: OpsContext, contract: str, receipt: dict[str, Any], event: str) -> list[dict[str, Any]]:
    """Decoded ``event`` logs of ``contract`` in a receipt, as plain dicts of arguments."""
    handle = getattr(ctx.contract(contract).events, event)()
    address = ctx.address(contract).lower()
    out: list[dict[str, Any]] = []
    for entry in receipt["logs"]:
        if str(entry["address"]).lower() != address:
            continue
        try:
            out.append(dict(handle.process_log(entry)["args"]))
        except (MismatchedABI, LogTopicError):  # another event of the same contract
            continue
    return out


def transact_many(ctx: OpsContext, calls: list[ContractFunction], contract: str, *, gas: int) -> list[TxResult]:
    """Send ``calls`` back to back at consecutive nonces with a fixed gas limit, then wait for every receipt.

    For bulk set-up (a demo fleet): one round trip per transaction instead of an estimate and a wait each. A call
    that reverts is replayed with ``eth_call`` so the error is the same decoded sentence as ``transact`` gives.
    """
    if not calls:
        return []
    account = ctx.require_sender()
    w3 = ctx.w3
    base = int(w3.eth.get_block("latest").get("baseFeePerGas", 0))
    tip = 1 if ctx.chain.is_local else 10**9
    nonce = w3.eth.get_transaction_count(account.address, "pending")
    hashes = []
    for offset, call in enumerate(calls):
        tx = call.build_transaction({"from": account.address, "gas": gas, "chainId": ctx.chain.chain_id,
                                     "nonce": nonce + offset, "maxPriorityFeePerGas": tip,
                                     "maxFeePerGas": 3 * base + tip})
        try:
            hashes.append(w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction))
        except (requests.RequestException, Web3Exception, ValueError) as exc:
            raise ChainError(f"sending transaction {offset + 1} of {len(calls)} failed: {exc}") from None
    results = []
    for call, tx_hash in zip(calls, hashes, strict=True):
        try:
            receipt = dict(w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60))
        except (requests.RequestException, Web3Exception, ValueError) as exc:
            raise ChainError(f"transaction {tx_hash.to_0x_hex()} was not mined: {exc}") from None
        if receipt["status"] != 1:
            try:
                call.call({"from": account.address}, block_identifier=receipt["blockNumber"] - 1)
            except ContractLogicError as exc:
                raise RevertedError(decoder(ctx, contract).decode(_revert_data(exc), contract, ctx)) from None
            raise ChainError(f"transaction {tx_hash.to_0x_hex()} reverted in block {receipt['blockNumber']} "
                             f"(out of gas at {gas}?)")
        results.append(TxResult(receipt["transactionHash"].to_0x_hex(), int(receipt["blockNumber"]),
                                int(receipt["gasUsed"]), receipt))
    return results
