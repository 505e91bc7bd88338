"""The event kinds the oracle relays: one table that intake, rules, store, planner and submitter read, and that a
device reads to find the verifying contract whose EIP-712 domain it signs each kind for.

Each wire type (the payload's ``"type"``, ``iotsettle.oracle.protocol.wire.EVENT_TYPES``) settles through one batch
function of one deployed contract, and the contract answers every batch item with exactly one settled or rejected
event whose topic 1 is the target (agreement, escrow, policy, or the station address) and whose first data word is
``seq`` (docs/PROTOCOL.md; the outcome matcher ``iotsettle.oracle.daemon.calldata.decode_outcomes`` relies on it).

- ``cumulative``: the settled figures are cumulative registers, so the newest event per target within a
  settlement window carries everything the older ones did; the planner supersedes the older ones.
- ``registers``: the signed fields that are cumulative counters, checked per device and target by the fraud
  rules (a decrease is ``counter_rollback``); the first one is also rate-limited with the device kind's limit
  (``impossible_rate``).
- ``located``: the event carries a geohash location (``invalid_location`` / ``teleport`` rules).
- ``ordered``: every event must reach the chain in seq order per device, because the contract refuses a seq at
  or below the device's last one and a skipped event is not made good by a later one (weather: a skipped
  observation's ``maxTemperature`` is lost). The planner keeps at most one batch of such a kind in flight, so a
  batch that is re-planned (out of gas, lost transaction) cannot land after a newer one.

A kind whose contract is missing from the deployment manifest is simply not relayed: intake answers its events
``wrong_contract`` and the settlement half never claims them.

Which signed field of a kind is kept in which store column is the store's own knowledge
(``iotsettle.oracle.daemon.store.COLUMNS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from iotsettle.oracle.protocol import eip712, wire


@dataclass(frozen=True)
class EventKind:
    """How one wire type is checked and settled."""

    wire: str  # payload "type"
    contract: str  # deployment manifest name of the verifying contract
    batch_function: str  # takes the array of signed structs
    settled_event: str  # one per settled item: (target indexed, seq, ...), or one batch log (protocol.settled)
    rejected_event: str  # one per rejected item: (target indexed, seq, reason)
    cumulative: bool  # newest event per target and settlement window supersedes the older ones
    registers: tuple[str, ...] = ()  # cumulative counters (rollback rule); the first one is rate-limited
    located: bool = False  # carries a bytes32 geohash location (location rules)
    ordered: bool = False  # must reach the chain in seq order per device: one batch in flight at a time
    #: cumulative kinds: the view that returns a target's struct with the last settled ``lastSeq``
    target_view: str = ""

    @property
    def primary_type(self) -> str:
        """The EIP-712 primary type (``iotsettle.oracle.protocol.eip712.TYPES``)."""
        return wire.EVENT_TYPES[self.wire]

    @property
    def target_field(self) -> str:
        return wire.TARGET_FIELDS[self.wire]

    @cached_property
    def fields(self) -> tuple[tuple[str, str], ...]:
        """(solidity type, name) of the signed fields in signing order: also the batch struct's order before r, vs."""
        return eip712.TYPES[self.primary_type]


KINDS: dict[str, EventKind] = {
    kind.wire: kind
    for kind in (
        EventKind(
            "reading",
            "MeteredBilling",
            "settle",
            "ReadingsSettled",
            "ReadingRejected",
            cumulative=True,
            registers=("value",),
            target_view="agreementOf",
        ),
        EventKind(
            "delivery",
            "DeliveryEscrow",
            "confirmDeliveries",
            "DeliveryConfirmed",
            "DeliveryRejected",
            cumulative=False,
            located=True,
        ),
        EventKind(
            "telematics",
            "MotorInsurance",
            "settle",
            "PremiumCharged",
            "TelematicsRejected",
            cumulative=True,
            registers=("odometer", "harshBraking", "speeding"),
            target_view="policyOf",
        ),
        # maxTemperature is a gauge (highest since the previous observation): every observation must settle
        EventKind(
            "weather",
            "CropInsurance",
            "record",
            "ObservationRecorded",
            "ObservationRejected",
            cumulative=False,
            registers=("rainfall",),
            ordered=True,
        ),
        # one summary per finished period: none supersedes another (a period counts its best tier, once, on chain)
        EventKind(
            "activity",
            "HealthInsurance",
            "settle",
            "SummarySettled",
            "SummaryRejected",
            cumulative=False,
        ),
    )
}

#: wire type → deployment manifest name of the verifying contract (the contract a device signs the kind for)
CONTRACT_OF_KIND: dict[str, str] = {name: kind.contract for name, kind in KINDS.items()}


def _check_table() -> None:
    """The table must agree with the protocol's own definitions (a mistake here would mis-settle silently)."""
    for name, kind in KINDS.items():
        if name != kind.wire or name not in wire.EVENT_TYPES:
            raise RuntimeError(f"event kind {name!r} is not a wire type")
        signed = {field for _, field in kind.fields}
        for field in kind.registers:
            if field not in signed:
                raise RuntimeError(f"event kind {name!r}: {field} is not a field of {kind.primary_type}")
        if [f for _, f in kind.fields[:3]] != [kind.target_field, "seq", "timestamp"]:
            raise RuntimeError(f"event kind {name!r}: {kind.primary_type} must start with target, seq, timestamp")


_check_table()
