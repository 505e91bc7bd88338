"""Batch calldata and outcome logs: how one event kind's batch function is called and how the contract answers.

``KindSpec`` is derived from the contract's ABI (``KindSpec.from_abi``) and the kinds table: the batch function's
selector and item layout (the signed fields in signing order, then the ERC-2098 compact signature r, vs: one ABI
word each in an array of structs, or packed back to back in one ``bytes`` argument when the batch function takes
``bytes``, ``iotsettle.oracle.protocol.packed``, with the agreement's terms after each item for the kinds that
carry them), and the topics of the per-item settled / rejected events.
``decode_outcomes`` reads a receipt's logs back into per-item outcomes. The signed fields of a stored event come
from the store (``store.signed_fields``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_abi import decode as abi_decode
from eth_hash.auto import keccak
from iotsettle.oracle.chain.abi import abi_type as _abi_type
from iotsettle.oracle.daemon.store import StoredEvent, signed_fields
from iotsettle.oracle.protocol import delivery_batch, premium, settled
from iotsettle.oracle.protocol.errors import ChainError
from iotsettle.oracle.protocol.kinds import KINDS
from iotsettle.oracle.protocol.packed import PACKED_WIDTHS, TERMS_SIZE, bytes_argument, pack_item
from web3 import Web3


@dataclass(frozen=True, slots=True)
class KindSpec:
    """How one event kind settles: the batch function and the per-item outcome events, derived from the ABI."""

    kind: str
    contract: str  # checksummed address
    selector: bytes
    item_types: tuple[str, ...]
    settled_topic: bytes
    rejected_topic: bytes
    #: items packed back to back in one ``bytes`` argument (``iotsettle.oracle.protocol.packed``)
    packed: bool = False
    #: the signed fields of a stored event in signing order; the store's ``signed_fields`` when not given
    fields_of: Callable[[StoredEvent], tuple[Any, ...]] | None = field(default=None, repr=False, compare=False)
    #: the agreement's packed terms by target id (deliveries: ``deliveryTerms``, batches then go to
    #: ``confirmDeliveriesPacked``, protocol.delivery_batch, instead of the ABI struct array; telematics:
    #: ``telematicsTerms``, sent after each packed item — without it the items carry unknown terms)
    terms_of: Callable[[int], bytes] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.fields_of is None:
            object.__setattr__(self, "fields_of", signed_fields(self.kind))

    @classmethod
    def from_abi(
        cls,
        kind: str,
        contract: str,
        abi: Sequence[Mapping[str, Any]],
        terms_of: Callable[[int], bytes] | None = None,
    ) -> KindSpec:
        """``terms_of`` (deliveries) switches to the packed batch when the contract has it; for packed kinds with
        terms (telematics) it gives the terms sent after each item."""
        spec = KINDS[kind]
        function = _abi_entry(abi, "function", spec.batch_function)
        (param,) = function["inputs"]
        arg_type = _abi_type(param)
        signed = tuple(typ for typ, _ in spec.fields)
        if arg_type == "bytes":
            if kind not in PACKED_WIDTHS:
                raise ChainError(f"{spec.contract}.{spec.batch_function} takes packed bytes, unknown for {kind} events")
            return cls(
                kind,
                Web3.to_checksum_address(contract),
                keccak(f"{spec.batch_function}(bytes)".encode())[:4],
                (*signed, "bytes32", "bytes32"),
                _topic(_abi_entry(abi, "event", spec.settled_event)),
                _topic(_abi_entry(abi, "event", spec.rejected_event)),
                packed=True,
                terms_of=terms_of if kind in TERMS_SIZE else None,
            )
        components = tuple(_abi_type(c) for c in param.get("components", ()))
        if components != (*signed, "bytes32", "bytes32"):
            raise ChainError(
                f"{spec.contract}.{spec.batch_function} takes ({','.join(components)}), the {kind} events need "
                f"({','.join(signed)},bytes32,bytes32); run `iotsettle compile` or upgrade iotsettle"
            )
        signature = f"{spec.batch_function}({arg_type})"
        packed = terms_of is not None and kind == "delivery" and _has(abi, "function", _PACKED_DELIVERIES)
        if packed:
            signature = f"{_PACKED_DELIVERIES}(bytes)"
        return cls(
            kind,
            Web3.to_checksum_address(contract),
            keccak(signature.encode())[:4],
            components,
            _topic(_abi_entry(abi, "event", spec.settled_event)),
            _topic(_abi_entry(abi, "event", spec.rejected_event)),
            terms_of=terms_of if packed else None,
        )

    def values(self, event: StoredEvent) -> tuple[Any, ...]:
        """The item tuple of one event: its signed fields in signing order + the ERC-2098 compact signature (r, vs)."""
        sig = bytes(event.sig)
        if len(sig) != 65 or sig[64] not in (27, 28):
            raise ValueError("the stored signature is not 65 bytes r‖s‖v with v 27/28")
        r, s = sig[:32], int.from_bytes(sig[32:64], "big")
        vs = (s | ((sig[64] - 27) << 255)).to_bytes(32, "big")
        return (*self.fields_of(event), r, vs)  # type: ignore[misc]  # never None after __post_init__

    def item(self, event: StoredEvent) -> bytes:
        """The encoding of one item: a packed delivery record with its escrow's terms, a packed item, or a static
        tuple (one word per field); ValueError if a field does not fit."""
        if self.packed:
            *fields, r, vs = self.values(event)
            terms = self.terms_of(fields[0]) if self.terms_of is not None else None
            return pack_item(self.kind, fields, r, vs, terms)
        if self.terms_of is not None:
            escrow_id, seq, timestamp, location, max_temperature, r, vs = self.values(event)
            return delivery_batch.record(
                escrow_id, seq, timestamp, bytes(location), max_temperature, r, vs, self.terms_of(escrow_id)
            )
        return b"".join(_abi_word(t, v) for t, v in zip(self.item_types, self.values(event), strict=True))

    def calldata(self, items: Sequence[bytes]) -> bytes:
        """``selector ‖ offset ‖ length ‖ items``: the ABI encoding of one dynamic array of static tuples, built by
        hand because eth_abi's generic encoder cost more than the rest of a batch's preparation. Packed kinds:
        ``selector ‖ offset ‖ length ‖ items ‖ padding``, one ``bytes`` argument; or the packed delivery batch."""
        if self.packed:
            return self.selector + bytes_argument(items)
        if self.terms_of is not None:
            return delivery_batch.calldata(self.selector, items)
        return self.selector + _ARRAY_OFFSET + len(items).to_bytes(32, "big") + b"".join(items)


_ARRAY_OFFSET = (32).to_bytes(32, "big")
_PACKED_DELIVERIES = "confirmDeliveriesPacked"


def _has(abi: Sequence[Mapping[str, Any]], typ: str, name: str) -> bool:
    return any(entry.get("type") == typ and entry.get("name") == name for entry in abi)


def _abi_word(typ: str, value: Any) -> bytes:
    if typ == "bytes32":
        raw = bytes(value or b"")
        if len(raw) != 32:
            raise ValueError(f"bytes32 needs 32 bytes, got {len(raw)}")
        return raw
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{typ} needs an integer, got {value!r}")
    if typ == "address":  # a target stored as an integer (a weather station)
        if not 0 <= value < 1 << 160:
            raise ValueError(f"{value} is not an address")
        return value.to_bytes(32, "big")
    bits = int(typ.removeprefix("u").removeprefix("int") or 256)
    if typ.startswith("uint"):
        if not 0 <= value < 1 << bits:
            raise ValueError(f"{value} does not fit {typ}")
        return value.to_bytes(32, "big")
    if typ.startswith("int"):
        if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
            raise ValueError(f"{value} does not fit {typ}")
        return (value % (1 << 256)).to_bytes(32, "big")
    raise ValueError(f"unsupported item field type {typ}")


def _abi_entry(abi: Sequence[Mapping[str, Any]], typ: str, name: str) -> Mapping[str, Any]:
    for entry in abi:
        if entry.get("type") == typ and entry.get("name") == name:
            return entry
    raise ChainError(f"the contract ABI has no {typ} {name}; run `iotsettle compile`")


def _topic(event: Mapping[str, Any]) -> bytes:
    return keccak(f"{event['name']}({','.join(_abi_type(p) for p in event['inputs'])})".encode())


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """What the contract did with one batch item, from the receipt's logs."""

    target_id: int
    seq: int
    settled: bool
    reason: int = 0  # RejectReason code when not settled


def _bytes(value: str | bytes) -> bytes:
    """Raw JSON-RPC results carry 0x-hex strings; web3-formatted ones carry bytes."""
    return bytes.fromhex(value[2:]) if isinstance(value, str) else bytes(value)


def hex_int(value: str | int) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def _seq(data: bytes) -> int:
    return int(abi_decode(["uint64"], data[:32])[0])


def decode_outcomes(spec: KindSpec, logs: Sequence[Mapping[str, Any]]) -> list[ItemOutcome]:
    """Per-item outcomes from a receipt's logs: per-item logs in emission order (= item order), and the records of a
    ``ReadingsSettled`` batch log (after the batch's refusals) in item order."""
    out: list[ItemOutcome] = []
    for entry in logs:
        if str(entry["address"]).lower() != spec.contract.lower() or not entry["topics"]:
            continue
        topic = _bytes(entry["topics"][0])
        if topic not in (spec.settled_topic, spec.rejected_topic):
            continue
        data = _bytes(entry["data"])
        if topic == settled.TOPIC:
            # one batch log for every settled item (protocol.settled); matching is by (target, seq)
            out += [ItemOutcome(r.agreement_id, r.seq, True) for r in settled.decode_log_data(data)]
            continue
        target = int.from_bytes(_bytes(entry["topics"][1]), "big")
        if topic == spec.settled_topic:
            # PremiumCharged packs the seq into its record word (protocol.premium); the other settled events
            # carry it as their first data word.
            seq = premium.unpack(data[:32]).seq if KINDS[spec.kind].settled_event == premium.EVENT else _seq(data)
            out.append(ItemOutcome(target, seq, True))
        else:
            out.append(ItemOutcome(target, _seq(data), False, abi_decode(["uint8"], data[32:64])[0]))
    return out
