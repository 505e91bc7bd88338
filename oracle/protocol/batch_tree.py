"""The batch commitment of optimistic settlement (``IOptimisticBilling``): leaves, root and inclusion proofs.

A batch is packed readings back to back (``packed.item_size("reading")`` = 114 bytes each, the layout of
``MeteredBilling.settle``). Leaf = keccak256(digest ‖ item), ``digest`` the reading's EIP-712 digest under the
optimistic contract's domain. A level pairs nodes (0,1), (2,3), … with the commutative keccak256 of OpenZeppelin
(``Hashes.commutativeKeccak256``: the smaller word first) and carries an odd last node up unchanged; a proof is the
sibling hashes from the leaf up, as OpenZeppelin ``MerkleProof`` verifies them. The contract rebuilds the same tree
in ``challengeData``; ``tests/vectors/optimistic-batch.json`` is checked by both sides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eth_hash.auto import keccak
from iotsettle.oracle.protocol import eip712
from iotsettle.oracle.protocol.packed import PACKED_WIDTHS, item_size, pack_item

READING_SIZE = item_size("reading")


@dataclass(frozen=True, slots=True)
class PackedReading:
    """One reading as a batch carries it: the signed fields and the ERC-2098 compact signature."""

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


def pack_reading(message: Mapping[str, int], signature: bytes) -> bytes:
    """A reading already signed (``message`` as ``PackedReading.message`` gives it, the 65-byte r ‖ s ‖ v
    signature), packed as a batch carries it (ERC-2098 compact signature)."""
    vs = int.from_bytes(signature[32:64], "big") | ((signature[64] - 27) << 255)
    fields = (message["agreementId"], message["seq"], message["timestamp"], message["value"])
    return pack_item("reading", fields, signature[:32], vs.to_bytes(32, "big"))


def split_batch(data: bytes) -> list[bytes]:
    """The items of a batch's data; ValueError when it is empty or not a whole number of items."""
    if not data or len(data) % READING_SIZE:
        raise ValueError(f"a batch is a positive multiple of {READING_SIZE} bytes, got {len(data)}")
    return [data[i : i + READING_SIZE] for i in range(0, len(data), READING_SIZE)]


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


def leaf(item: bytes, domain: eip712.Domain) -> bytes:
    """keccak256(digest ‖ item) of one packed reading."""
    return keccak(eip712.digest("Reading", decode_reading(item).message(), domain) + item)


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
