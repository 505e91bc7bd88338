"""The batch commitment of optimistic settlement (``IOptimisticBatches``): leaves, root and inclusion proofs.

Two kinds settle this way: readings (``OptimisticBilling``) and telematics reports (``OptimisticMotor``); every
function taking ``kind`` defaults to readings. A telematics report travels whole as ``MotorInsurance.settle`` packs it
(174 bytes, ``packed.item_size("telematics")``, the terms included); its batch item (``ITEM_SIZES``) is 90 bytes:
index (uint16), seq (uint40), timestamp − base (uint24), odometer (uint64), harshBraking, speeding (uint32 each), r, vs.

A reading travels whole in a challenge or a claim: ``packed.item_size("reading")`` = 114 bytes, the layout of
``MeteredBilling.settle`` (``sign_reading``, ``decode_reading``). A batch's data (``pack_batch``, ``split_batch``)
is shorter per reading: a header of the agreement count ``k`` (uint16) and the base of the timestamps (uint40, the
smallest), ``k`` agreement ids (32 bytes each), then one 82-byte item per reading: its index in that table (uint16),
seq (uint40), timestamp − base (uint24), value (uint64), r, vs. Leaf = keccak256(digest ‖ r ‖ vs), ``digest`` the
reading's EIP-712 digest under the optimistic contract's domain: exactly what the device signed, and its signature.
A level pairs nodes (0,1), (2,3), … with the commutative keccak256 of OpenZeppelin
(``Hashes.commutativeKeccak256``: the smaller word first) and carries an odd last node up unchanged; a proof is the
sibling hashes from the leaf up, as OpenZeppelin ``MerkleProof`` verifies them. The contract rebuilds the same tree
in ``challengeData``; ``tests/vectors/optimistic-batch.json`` is checked by both sides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eth_hash.auto import keccak
from iotsettle.oracle.protocol import eip712
from iotsettle.oracle.protocol.packed import PACKED_WIDTHS, UNKNOWN_TERMS, item_size, pack_item

READING_SIZE = item_size("reading")
#: bytes per reading in a batch's data, after the header and the agreement table
ITEM_SIZE = 82
#: agreement count (uint16) ‖ base timestamp (uint40)
HEADER_SIZE = 7
#: most readings in one batch (``OptimisticBilling.MAX_BATCH_READINGS``: a data challenge must fit in a block); the
#: same for telematics reports (``OptimisticMotor.MAX_BATCH_REPORTS``)
MAX_BATCH_READINGS = 4_096
#: kind → the optimistic contract its batches go to
CONTRACTS = {"reading": "OptimisticBilling", "telematics": "OptimisticMotor"}
#: kind → the EIP-712 primary type its devices sign
PRIMARY = {"reading": "Reading", "telematics": "Telematics"}
#: kind → bytes per event in a batch's data: index 2, seq 5, timestamp offset 3, the fields after the timestamp at
#: their packed widths, r and vs
ITEM_SIZES = {kind: 2 + 5 + 3 + sum(PACKED_WIDTHS[kind][3:]) + 64 for kind in CONTRACTS}
#: set in every agreement id OptimisticBilling mints (``OptimisticBilling.AGREEMENT_ID_FLAG``: ``device << 96 |
#: tariffId << 64 | flag | count``); MeteredBilling's ids never carry it, so an id names one agreement across both
#: modes, and says which contract's domain its readings are signed for
AGREEMENT_ID_FLAG = 1 << 63
_MAX_OFFSET = 1 << 24
_MAX_AGREEMENTS = 1 << 16


def is_optimistic(agreement_id: int) -> bool:
    """Whether ``agreement_id`` was minted by OptimisticBilling (``AGREEMENT_ID_FLAG``)."""
    return bool(agreement_id & AGREEMENT_ID_FLAG)


@dataclass(frozen=True, slots=True)
class PackedReading:
    """One reading whole (as a claim or a challenge carries it): the signed fields and the ERC-2098 compact
    signature."""

    agreement_id: int
    seq: int
    timestamp: int
    value: int
    r: bytes
    vs: bytes

    def message(self) -> dict[str, int]:
        return {"agreementId": self.agreement_id, "seq": self.seq, "timestamp": self.timestamp, "value": self.value}

    def signature(self) -> bytes:
        """The 65-byte r ‖ s ‖ v form of the compact signature."""
        vs = int.from_bytes(self.vs, "big")
        s = vs & ((1 << 255) - 1)
        return self.r + s.to_bytes(32, "big") + bytes([27 + (vs >> 255)])


def sign_reading(
    private_key: bytes, domain: eip712.Domain, agreement_id: int, seq: int, timestamp: int, value: int
) -> bytes:
    """A reading signed by a device key, packed as a batch carries it (ERC-2098 compact signature)."""
    message = {"agreementId": agreement_id, "seq": seq, "timestamp": timestamp, "value": value}
    return pack_reading(message, eip712.sign_digest(private_key, eip712.digest("Reading", message, domain)))


def sign_telematics(
    private_key: bytes, domain: eip712.Domain, message: Mapping[str, int], terms: bytes | None = None
) -> bytes:
    """A telematics report (``message``: the EIP-712 fields of Telematics) signed by a vehicle key, packed as a claim
    or a challenge carries it (174 bytes; ``terms`` as ``telematicsTerms`` returns them, else unknown)."""
    signature = eip712.sign_digest(private_key, eip712.digest("Telematics", message, domain))
    vs = int.from_bytes(signature[32:64], "big") | ((signature[64] - 27) << 255)
    fields = [message[name] for _, name in eip712.TYPES["Telematics"]]
    return pack_item("telematics", fields, signature[:32], vs.to_bytes(32, "big"), terms)


def pack_signed(kind: str, message: Mapping[str, int], signature: bytes, terms: bytes | None = None) -> bytes:
    """An event of ``kind`` already signed (``message`` its EIP-712 fields, the 65-byte r ‖ s ‖ v signature), packed
    as a claim or a challenge carries it (ERC-2098 compact signature; a report with ``terms``, else unknown terms)."""
    _widths(kind)
    vs = int.from_bytes(signature[32:64], "big") | ((signature[64] - 27) << 255)
    fields = [message[name] for _, name in eip712.TYPES[PRIMARY[kind]]]
    return pack_item(kind, fields, signature[:32], vs.to_bytes(32, "big"), terms)


def pack_reading(message: Mapping[str, int], signature: bytes) -> bytes:
    """A reading already signed (``message`` as ``PackedReading.message`` gives it, the 65-byte r ‖ s ‖ v
    signature), packed as a batch carries it (ERC-2098 compact signature)."""
    vs = int.from_bytes(signature[32:64], "big") | ((signature[64] - 27) << 255)
    fields = (message["agreementId"], message["seq"], message["timestamp"], message["value"])
    return pack_item("reading", fields, signature[:32], vs.to_bytes(32, "big"))


def _widths(kind: str) -> tuple[int, int, int]:
    """Bytes of seq, of the timestamp and of the fields after it in a packed item of ``kind``."""
    if kind not in CONTRACTS:
        raise ValueError(f"{kind} events are not settled in optimistic batches")
    widths = PACKED_WIDTHS[kind]
    return widths[1], widths[2], sum(widths[3:])


def pack_batch(items: Sequence[bytes], kind: str = "reading") -> bytes:
    """The data ``commit`` takes for packed events of ``kind`` (readings of 114 bytes as ``sign_reading`` returns
    them; telematics reports of 174 as ``MotorInsurance.settle`` packs them), in this order; ValueError when there
    are none or more than ``MAX_BATCH_READINGS``, more than 65,535 targets, a seq of 2^40 or more, or timestamps
    spread over 2^24 seconds (194 days) or more: split such a batch."""
    seq_width, time_width, rest = _widths(kind)
    if not items:
        raise ValueError(f"a batch has at least one {kind}")
    if len(items) > MAX_BATCH_READINGS:
        raise ValueError(f"a batch holds at most {MAX_BATCH_READINGS} events, got {len(items)}")
    size = item_size(kind)
    if any(len(raw) != size for raw in items):
        raise ValueError(f"a packed {kind} is {size} bytes")
    table: dict[bytes, int] = {}
    for raw in items:
        table.setdefault(raw[:32], len(table))
    if len(table) >= _MAX_AGREEMENTS:
        raise ValueError(f"a batch names at most {_MAX_AGREEMENTS - 1} targets, got {len(table)}")
    seqs = [int.from_bytes(raw[32 : 32 + seq_width], "big") for raw in items]
    times = [int.from_bytes(raw[32 + seq_width : 32 + seq_width + time_width], "big") for raw in items]
    if max(seqs) >= 1 << 40:
        raise ValueError("a batch carries seq in 5 bytes: settle an event with a larger seq directly")
    base = min(times)
    if max(times) - base >= _MAX_OFFSET:
        raise ValueError("the events of a batch must lie within 2^24 seconds of each other: split the batch")
    out = bytearray(len(table).to_bytes(2, "big") + base.to_bytes(5, "big"))
    for target in table:
        out += target
    fields_end = 32 + seq_width + time_width
    for raw, seq, time in zip(items, seqs, times, strict=True):
        out += table[raw[:32]].to_bytes(2, "big") + seq.to_bytes(5, "big") + (time - base).to_bytes(3, "big")
        out += raw[fields_end : fields_end + rest + 64]
    return bytes(out)


def split_batch(data: bytes, kind: str = "reading") -> list[bytes]:
    """The events of a batch's data, each packed whole as a claim or a challenge carries it (a telematics report
    with ``packed.UNKNOWN_TERMS``: the terms are not in a batch); ValueError when the data is not a batch or an item
    cannot stand for an event (its index past the table, a reading's timestamp beyond 5 bytes): the contract's data
    challenge voids such a batch."""
    seq_width, time_width, rest = _widths(kind)
    size = ITEM_SIZES[kind]
    if len(data) < HEADER_SIZE:
        raise ValueError(f"a batch starts with a {HEADER_SIZE}-byte header, got {len(data)} bytes")
    count = int.from_bytes(data[:2], "big")
    base = int.from_bytes(data[2:HEADER_SIZE], "big")
    table_end = HEADER_SIZE + 32 * count
    if count == 0 or len(data) <= table_end or (len(data) - table_end) % size:
        raise ValueError(f"a batch is a header, a table and a positive multiple of {size} bytes, got {len(data)}")
    table = [data[HEADER_SIZE + 32 * i : HEADER_SIZE + 32 * (i + 1)] for i in range(count)]
    events = []
    for at in range(table_end, len(data), size):
        item = data[at : at + size]
        index = int.from_bytes(item[:2], "big")
        timestamp = base + int.from_bytes(item[7:10], "big")
        if index >= count or timestamp >= 1 << (8 * time_width):
            raise ValueError(f"the batch item at byte {at} names no {kind}")
        seq = int.from_bytes(item[2:7], "big")
        events.append(
            table[index]
            + seq.to_bytes(seq_width, "big")
            + timestamp.to_bytes(time_width, "big")
            + item[10 : 10 + rest + 64]
            + UNKNOWN_TERMS.get(kind, b"")
        )
    return events


def decode_reading(item: bytes) -> PackedReading:
    """The fields of one packed item; ValueError for a wrong length."""
    if len(item) != READING_SIZE:
        raise ValueError(f"a packed reading is {READING_SIZE} bytes, got {len(item)}")
    values: list[int] = []
    at = 0
    for width in PACKED_WIDTHS["reading"]:
        values.append(int.from_bytes(item[at : at + width], "big"))
        at += width
    agreement_id, seq, timestamp, value = values
    return PackedReading(agreement_id, seq, timestamp, value, item[at : at + 32], item[at + 32 : at + 64])


def decode_item(item: bytes, kind: str = "reading") -> tuple[dict[str, int], bytes, bytes]:
    """The signed message (EIP-712 field name → value), r and vs of one packed event of ``kind``; ValueError for a
    wrong length."""
    _widths(kind)
    if len(item) != item_size(kind):
        raise ValueError(f"a packed {kind} is {item_size(kind)} bytes, got {len(item)}")
    names = [name for _, name in eip712.TYPES[PRIMARY[kind]]]
    message: dict[str, int] = {}
    at = 0
    for name, width in zip(names, PACKED_WIDTHS[kind], strict=True):
        message[name] = int.from_bytes(item[at : at + width], "big")
        at += width
    return message, item[at : at + 32], item[at + 32 : at + 64]


def leaf(item: bytes, domain: eip712.Domain, kind: str = "reading") -> bytes:
    """keccak256(digest ‖ r ‖ vs) of one packed event of ``kind`` (a reading: 114 bytes; a report: 174)."""
    message, r, vs = decode_item(item, kind)
    return keccak(eip712.digest(PRIMARY[kind], message, domain) + r + vs)


def _pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


def _up(level: Sequence[bytes]) -> list[bytes]:
    return [_pair(level[i], level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]


def root(leaves: Sequence[bytes]) -> bytes:
    """The root of a non-empty list of leaves."""
    if not leaves:
        raise ValueError("a batch has at least one leaf")
    level = list(leaves)
    while len(level) > 1:
        level = _up(level)
    return level[0]


def proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The sibling hashes from leaf ``index`` up to the root."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} of {len(leaves)}")
    path: list[bytes] = []
    level = list(leaves)
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        level = _up(level)
        index //= 2
    return path


def verify(proof_: Sequence[bytes], root_: bytes, leaf_: bytes) -> bool:
    """Whether ``proof_`` proves ``leaf_`` under ``root_`` (OpenZeppelin MerkleProof.verify)."""
    node = leaf_
    for sibling in proof_:
        node = _pair(node, sibling)
    return node == root_
