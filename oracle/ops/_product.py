"""What the insurance and loan operations share: named struct views and product-specific revert sentences.

``iotsettle.oracle.ops.sentences`` writes sentences for the escrow and billing contracts; the product contracts reuse
some of their error names with other arguments (``WrongStatus(policyId, status)``, ``NothingToWithdraw(token,
account)``), so each product module passes its own sentences here and they take precedence for calls to that contract.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.ops.tx import RevertedError, TxResult, transact
from web3.contract.contract import ContractFunction

log = logging.getLogger(__name__)

Sentences = Mapping[str, Callable[[dict[str, Any]], str]]


def transact_explained(ctx: OpsContext, call: ContractFunction, contract: str, sentences: Sentences) -> TxResult:
    """``transact``, with a revert of ``contract`` told in the product's own words when ``sentences`` knows it."""
    try:
        return transact(ctx, call, contract)
    except RevertedError as exc:
        raise explain(exc, sentences, ctx.contract(contract).abi) from None


def _renamed(args: dict[str, Any], name: str, abi: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The arguments named as ``abi`` names them: errors of several contracts share selectors
    (``WrongStatus(uint256,uint8)`` is a policy's, a loan's…), and the shared decoder knows one set of names."""
    for entry in abi:
        if entry.get("type") == "error" and entry.get("name") == name and len(entry["inputs"]) == len(args):
            return {inp["name"]: value for inp, value in zip(entry["inputs"], args.values(), strict=True)}
    return args


def explain(exc: RevertedError, sentences: Sentences, abi: Sequence[Mapping[str, Any]] | None = None) -> RevertedError:
    writer = sentences.get(exc.revert.name)
    if writer is None:
        return exc
    try:
        sentence = writer(_renamed(exc.revert.args, exc.revert.name, abi or []))
    except (KeyError, ValueError, IndexError, TypeError) as err:  # the error has other arguments: keep the generic one
        log.debug("no product sentence for %s: %s", exc.revert.name, err)
        return exc
    return RevertedError(dataclasses.replace(exc.revert, sentence=sentence))


def named(abi: Sequence[Mapping[str, Any]], function: str, raw: Any) -> dict[str, Any]:
    """A struct returned by ``function`` as a dict by field name (nested structs too), from the ABI."""
    for entry in abi:
        if entry.get("type") == "function" and entry.get("name") == function:
            outputs = entry["outputs"]
            if len(outputs) == 1 and outputs[0]["type"].startswith("tuple"):
                return _zip(outputs[0], raw)
            return {o["name"]: v for o, v in zip(outputs, raw, strict=True)}
    raise KeyError(f"{function} is not in the ABI")


def _zip(param: Mapping[str, Any], value: Any) -> Any:
    if param["type"] == "tuple":
        return {c["name"]: _zip(c, v) for c, v in zip(param["components"], value, strict=True)}
    if param["type"] == "tuple[]":
        inner = {**param, "type": "tuple"}
        return [_zip(inner, v) for v in value]
    return value


def state_name(names: tuple[str, ...], value: int) -> str:
    return names[value] if 0 <= value < len(names) else f"state {value}"


def when(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
