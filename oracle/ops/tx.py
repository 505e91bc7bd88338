"""Send contract calls for an operation through ``iotsettle.oracle.chain.send``, with reverts decoded into the
sentences of ``iotsettle.oracle.ops.sentences``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from iotsettle.oracle.chain.send import Decode, send_call, send_many
from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.ops.sentences import DecodedRevert, RevertDecoder
from iotsettle.oracle.protocol import premium
from iotsettle.oracle.protocol.errors import ChainError
from web3.contract.contract import ContractFunction
from web3.exceptions import LogTopicError, MismatchedABI

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


def _raiser(ctx: OpsContext, contract: str) -> Decode:
    """Revert data of a call to ``contract`` → the RevertedError carrying its sentence (the decoder is built only
    when a call reverts)."""
    return lambda data: RevertedError(decoder(ctx, contract).decode(data, contract, ctx))


def _result(receipt: dict[str, Any]) -> TxResult:
    return TxResult(
        receipt["transactionHash"].to_0x_hex(), int(receipt["blockNumber"]), int(receipt["gasUsed"]), receipt
    )


def transact(ctx: OpsContext, call: ContractFunction, contract: str, *, value: int = 0) -> TxResult:
    """Estimate (decoding any revert into a RevertedError), then sign, send and wait for the receipt."""
    receipt = send_call(ctx.chain, ctx.require_sender(), call, value=value, decode=_raiser(ctx, contract))
    log.info("%s.%s mined in block %s (gas %s)", contract, call.fn_name, receipt["blockNumber"], receipt["gasUsed"])
    return _result(receipt)


def events_in(ctx: OpsContext, contract: str, receipt: dict[str, Any], event: str) -> list[dict[str, Any]]:
    """Decoded ``event`` logs of ``contract`` in a receipt, as plain dicts of arguments (a ``PremiumCharged``
    record expanded into its named fields, ``iotsettle.oracle.protocol.premium``)."""
    handle = getattr(ctx.contract(contract).events, event)()
    address = ctx.address(contract).lower()
    out: list[dict[str, Any]] = []
    for entry in receipt["logs"]:
        if str(entry["address"]).lower() != address:
            continue
        try:
            out.append(premium.expand(event, handle.process_log(entry)["args"]))
        except (MismatchedABI, LogTopicError):  # another event of the same contract
            continue
    return out


def transact_many(ctx: OpsContext, calls: list[ContractFunction], contract: str, *, gas: int) -> list[TxResult]:
    """Send ``calls`` back to back at consecutive nonces with a fixed gas limit, then wait for every receipt
    (``iotsettle.oracle.chain.send.send_many``); a call that reverts raises the same RevertedError as ``transact``."""
    if not calls:
        return []
    account = ctx.require_sender()
    return [_result(r) for r in send_many(ctx.chain, account, calls, gas=gas, decode=_raiser(ctx, contract))]
