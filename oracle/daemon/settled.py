"""What the chain has already settled of a cumulative batch, read before it is sent.

Several relayers may hold readings of the same agreement (instances of a route group while one restarts, a shared
subscription, a second oracle run by someone else): whichever relays first settles the newest reading, and the
contract refuses the others' as ``Replayed`` at their gas cost. One batched ``eth_call`` of the targets' last
settled seq before the batch is sent lets a relayer drop what is already on chain instead: such readings are
superseded (the chain holds the same or a newer register of their target), and nothing is lost, because a
cumulative register pays every unit up to it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from iotsettle.oracle.chain.calls import ContractReader, read
from iotsettle.oracle.chain.rpc import RpcClient
from iotsettle.oracle.daemon.store import StoredEvent
from iotsettle.oracle.protocol.kinds import KINDS

log = logging.getLogger(__name__)


def _last_seq_index(abi: Sequence[Mapping[str, Any]], view: str) -> int | None:
    """Position of ``lastSeq`` in the struct ``view`` returns, or None when the ABI has no such view."""
    for entry in abi:
        if entry.get("type") == "function" and entry.get("name") == view and len(entry.get("outputs", ())) == 1:
            names = [c.get("name") for c in entry["outputs"][0].get("components", ())]
            return names.index("lastSeq") if "lastSeq" in names else None
    return None


class SettledSeqs:
    """The last settled seq per target of the cumulative kinds among ``contracts`` (kind → (address, ABI))."""

    def __init__(self, rpc: RpcClient, contracts: Mapping[str, tuple[str, Sequence[Mapping[str, Any]]]]) -> None:
        self.rpc = rpc
        self._views: dict[str, tuple[ContractReader, str, int]] = {}
        for kind, (address, abi) in contracts.items():
            view = KINDS[kind].target_view if kind in KINDS and KINDS[kind].cumulative else ""
            index = _last_seq_index(abi, view) if view else None
            if index is not None:
                self._views[kind] = (ContractReader(rpc, address, abi), view, index)

    def already_settled(self, kind: str, events: Sequence[StoredEvent]) -> list[StoredEvent]:
        """The events whose target has a seq at or above theirs on chain; [] for other kinds. Raises ChainError
        (or the RPC client's errors) when the node cannot be read."""
        view = self._views.get(kind)
        if view is None or not events:
            return []
        reader, name, index = view
        targets = sorted({event.target_id for event in events})
        structs = read(self.rpc, [(reader, name, (target,)) for target in targets])
        last = {target: int(struct[index]) for target, struct in zip(targets, structs, strict=True)}
        return [event for event in events if event.seq <= last[event.target_id]]
