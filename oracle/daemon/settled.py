"""What the chain has already settled of a cumulative batch, read before it is sent.

Several relayers may hold readings of the same agreement (instances of a route group while one restarts, a shared
subscription, a second oracle run by someone else): whichever relays first settles the newest reading, and the
contract refuses the others' as ``Replayed`` at their gas cost. One batched ``eth_call`` of the targets' last
settled seq before the batch is sent lets a relayer drop what is already on chain instead: such readings are
superseded (the chain holds the same or a newer register of their target), and nothing is lost, because a
cumulative register pays every unit up to it.

The read sits on the path of every cumulative batch, so it is cut to what it needs: the view's struct is static (one
word per field), so ``lastSeq`` is read as its word of the result rather than by decoding the whole struct, and the
requests are built from the selector computed once (decoding a hundred structs with eth-abi cost more CPU than
the rest of a batch's preparation).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from iotsettle.oracle.chain.abi import selector
from iotsettle.oracle.chain.calls import ContractReader
from iotsettle.oracle.chain.rpc import RpcClient
from iotsettle.oracle.daemon.store import StoredEvent
from iotsettle.oracle.protocol.errors import ChainError
from iotsettle.oracle.protocol.kinds import KINDS

log = logging.getLogger(__name__)

_WORD = 32


def _view(abi: Sequence[Mapping[str, Any]], view: str) -> Mapping[str, Any] | None:
    for entry in abi:
        if entry.get("type") == "function" and entry.get("name") == view and len(entry.get("outputs", ())) == 1:
            return entry
    return None


def _last_seq_index(abi: Sequence[Mapping[str, Any]], view: str) -> int | None:
    """Position of ``lastSeq`` in the struct ``view`` returns, or None when the ABI has no such view."""
    entry = _view(abi, view)
    if entry is None:
        return None
    names = [c.get("name") for c in entry["outputs"][0].get("components", ())]
    return names.index("lastSeq") if "lastSeq" in names else None


def _one_word(param: Mapping[str, Any]) -> bool:
    """Whether a struct field takes exactly one ABI word in place (an elementary static type)."""
    typ = str(param.get("type", ""))
    if "[" in typ or typ in ("bytes", "string") or typ.startswith("tuple"):
        return False
    return typ in ("address", "bool") or typ.startswith(("uint", "int", "bytes"))


def _word_view(abi: Sequence[Mapping[str, Any]], view: str) -> bytes | None:
    """The selector of ``view`` when it takes one uint256 and returns a struct of one-word fields (its encoding is
    then the fields' words in order, so ``lastSeq`` is one slice of the result); None otherwise."""
    entry = _view(abi, view)
    if entry is None:
        return None
    inputs = entry.get("inputs", ())
    (output,) = entry["outputs"]
    if [str(p.get("type")) for p in inputs] != ["uint256"] or output.get("type") != "tuple":
        return None
    if not all(_one_word(c) for c in output.get("components", ())):
        return None
    return selector(view, inputs)


@dataclass(frozen=True, slots=True)
class _View:
    reader: ContractReader
    name: str
    index: int  # of lastSeq among the struct's fields
    selector: bytes | None  # set when lastSeq can be read as one word of the result (``_word_view``)


class SettledSeqs:
    """The last settled seq per target of the cumulative kinds among ``contracts`` (kind → (address, ABI))."""

    def __init__(self, rpc: RpcClient, contracts: Mapping[str, tuple[str, Sequence[Mapping[str, Any]]]]) -> None:
        self.rpc = rpc
        self._views: dict[str, _View] = {}
        for kind, (address, abi) in contracts.items():
            view = KINDS[kind].target_view if kind in KINDS and KINDS[kind].cumulative else ""
            index = _last_seq_index(abi, view) if view else None
            if index is not None:
                self._views[kind] = _View(ContractReader(rpc, address, abi), view, index, _word_view(abi, view))

    def already_settled(self, kind: str, events: Sequence[StoredEvent]) -> list[StoredEvent]:
        """The events whose target has a seq at or above theirs on chain; [] for other kinds. Raises ChainError
        (or the RPC client's errors) when the node cannot be read."""
        return self.already_settled_of([(kind, events)])[0]

    def already_settled_of(self, batches: Sequence[tuple[str, Sequence[StoredEvent]]]) -> list[list[StoredEvent]]:
        """``already_settled`` of each (kind, events) of ``batches``, read with one batch request for all of them
        (the batches a settlement pass cuts together cost one round trip to the node, not one each)."""
        wanted: dict[tuple[str, int], int] = {}  # (kind, target) → position of its request
        requests: list[tuple[str, list[Any]]] = []
        for kind, events in batches:
            view = self._views.get(kind)
            if view is None:
                continue
            for target in sorted({event.target_id for event in events}):
                if (kind, target) not in wanted:
                    wanted[kind, target] = len(requests)
                    requests.append(self._request(view, target))
        if not requests:
            return [[] for _ in batches]
        results = self.rpc.batch(requests)
        last: dict[tuple[str, int], int] = {
            key: self._last_seq(self._views[key[0]], results[at]) for key, at in wanted.items()
        }
        return [
            [event for event in events if event.seq <= last[kind, event.target_id]] if kind in self._views else []
            for kind, events in batches
        ]

    @staticmethod
    def _request(view: _View, target: int) -> tuple[str, list[Any]]:
        if view.selector is None:
            return view.reader.request(view.name, target)
        return "eth_call", [{"to": view.reader.address, "data": f"0x{view.selector.hex()}{target:064x}"}, "latest"]

    @staticmethod
    def _last_seq(view: _View, result: Any) -> int:
        if view.selector is None:
            return int(view.reader.decode(view.name, result)[view.index])
        start = 2 + 2 * _WORD * view.index  # "0x" + hex digits of the words before lastSeq
        word = str(result or "")[start : start + 2 * _WORD]
        if len(word) != 2 * _WORD:
            raise ChainError(
                f"{view.name} at {view.reader.address} returned {len(str(result or '')) // 2 - 1} bytes: no contract?"
            )
        return int(word, 16)
