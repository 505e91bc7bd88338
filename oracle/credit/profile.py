"""Credit profile: an owner's settlement history re-derived from chain events only, exportable and verifiable.

Three parts, kept apart so the rules can be tested and re-run without a node:

- **fetching** (:func:`scan`): chunked ``eth_getLogs`` over the deployment's contracts, each from its deployment
  block up to one fixed block, plus the timestamps of the blocks whose time a figure needs. Nothing else is read:
  no contract state, no oracle database.
- **derivation** (:func:`derive`): a pure function of the decoded logs, the block times and the end block. Every
  figure carries its evidence: the logs that contributed to it.
- **export / verify** (:func:`document`, :func:`canonical_json`, :func:`verify_document`): the JSON a lender
  keeps, with the chain id, genesis hash, contract addresses, block range and the hash of the last block scanned,
  and the re-derivation that checks such a file against any node.

The figures and their exact definitions are in docs/CREDIT.md; :data:`DEFINITIONS` is the short form written into
every export.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_hash.auto import keccak
from eth_utils import to_checksum_address
from web3.exceptions import Web3Exception

from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.errors import ChainError, IotSettleError

log = logging.getLogger(__name__)

#: Bumped whenever a figure's definition or the file layout changes; verify refuses other versions.
PROFILE_VERSION = 1
#: The contracts a profile reads, in deployment order; one missing from the manifest is skipped.
CONTRACTS = ("DeviceRegistry", "DeliveryEscrow", "MeteredBilling", "MotorInsurance", "CropInsurance", "LoanBook")
#: Blocks per eth_getLogs call; a node that refuses a range (too many results) gets it in halves.
LOG_CHUNK_BLOCKS = 50_000
#: Ids per topic list in one eth_getLogs call (nodes bound the size of a filter).
IDS_PER_QUERY = 100
#: Block headers per JSON-RPC batch when reading block times.
BLOCKS_PER_BATCH = 200
#: A device younger than this at the end of the range has its uptime counted in hours instead of days.
YOUNG_DEVICE_SECONDS = 7 * 86_400
HOUR = 3_600
DAY = 86_400
BPS = 10_000

KIND_NAMES = {int(kind): kind.name for kind in DeviceKind}

#: Events whose block time some figure needs (uptime, suspension lengths, repayment dates).
TIMED_EVENTS = frozenset({"DeviceRegistered", "DeviceRevoked", "ReadingSettled", "DeliveryConfirmed", "PremiumCharged",
                          "ObservationRecorded", "AgreementSuspended", "AgreementResumed", "PolicyLapsed",
                          "PolicyReinstated", "LoanRepaid"})

DEFINITIONS: dict[str, str] = {
    "amounts": "Money figures are maps token address → base units (decimal strings); tokens are never added up. "
               "address(0) is ETH.",
    "devices": "Devices whose DeviceRegistered event names the subject as owner (a claim of the subject: anyone can "
               "register keys it controls). keyRotations = KeyRotated events, revokedAt = time of DeviceRevoked.",
    "devices.uptime": "Share of UTC buckets (days; hours for devices younger than 7 days at the end of the range or "
                      "at revocation) from the registration bucket to the end bucket inclusive that hold at least "
                      "one settled event naming the device: ReadingSettled / PremiumCharged (device = top 160 bits "
                      "of the agreement / policy id), DeliveryConfirmed (device of the escrow's EscrowCreated), "
                      "ObservationRecorded (station = device). bps = active × 10000 ÷ buckets, rounded down. The "
                      "evidence of `active` is the first settled event of each active bucket.",
    "devices.settled": "events = settled events naming the device; billed = ReadingSettled amounts (meters: the "
                       "event carries money, not register units); deliveries / released = DeliveryConfirmed count "
                       "and toSeller; metres = PremiumCharged metres; rainfall = last − first ObservationRecorded "
                       "rainfall register in the range (0.01 mm).",
    "consumer": "MeteredBilling agreements whose AgreementOffered names the subject as consumer. deposited = "
                "AgreementAccepted deposit + ToppedUp amounts (whoever paid); billed = ReadingSettled amounts (taken "
                "from the prepaid balance); arrearsIncurred = AgreementSuspended arrears; arrearsPaid = ToppedUp "
                "arrearsPaid.",
    "consumer.paidOnTime": "A settled reading is paid on time when the prepaid balance covered its whole cost when "
                           "it was settled on chain, i.e. its ReadingSettled is not followed in the same transaction "
                           "(next log) by AgreementSuspended for the same agreement. A reading that ran the balance "
                           "dry is not paid on time, even if the arrears were paid later. paidOnTimeBps = "
                           "readingsPaidOnTime × 10000 ÷ readings (null without readings).",
    "consumer.suspensions": "suspensions = AgreementSuspended events (fell into arrears); resumptions = "
                            "AgreementResumed; suspendedSeconds = time between each suspension and its resumption "
                            "(block times), an unresolved one counted to the end of the range; suspendedNow = "
                            "agreements still suspended at the end block.",
    "seller": "DeliveryEscrow escrows whose EscrowCreated names as seller the subject or the payout account of one "
              "of its accepted loans (LoanAccepted.account). delivered = DeliveryConfirmed "
              "(the contract only accepts a delivery signed no later than the deadline); refunded = EscrowRefunded "
              "(not delivered by the deadline); overdue = neither released, refunded nor cancelled and the deadline "
              "passed before the end block; onTimeBps = delivered × 10000 ÷ (delivered + refunded + overdue). "
              "released / penalties = DeliveryConfirmed toSeller / toBuyer.",
    "motor": "MotorInsurance policies whose PolicyOffered names the subject as holder. premiums = PremiumCharged "
             "amounts; reportsPaidOnTime = PremiumCharged not followed in the same transaction by PolicyLapsed for "
             "the same policy; lapses = PolicyLapsed; lapsedSeconds as consumer.suspendedSeconds.",
    "crop": "CropInsurance covers whose CoverBought names the subject as buyer, or as beneficiary the subject or "
            "one of its loans' payout accounts. premiumsPaid counts covers the subject bought; payoutsReceived / "
            "payoutsToLoanAccounts / payoutsToOthers = PayoutSent amounts to the subject / to its loans' payout "
            "accounts / to another beneficiary; payoutsCredited = PayoutSent followed in the same transaction by the "
            "contract's Credited of the beneficiary (the push failed and the amount waits as a pull credit, still the "
            "beneficiary's); expired = covers of a season whose SeasonFinalized says it did not trigger.",
    "loans": "LoanBook loans whose LoanOffered names the subject as borrower. taken = LoanAccepted; repaid = "
             "Repaid amounts; repaidByDueBy = LoanRepaid in a block whose time ≤ dueBy; overdue = taken, not "
             "repaid, dueBy before the end block; outstanding = repayment − repaid of taken loans; onTimeBps = "
             "repaidByDueBy × 10000 ÷ (fullyRepaid + overdue).",
    "trust": "Only settled on-chain events count. Devices are the subject's own claims and may be sybils it "
             "controls; a counterparty may be the subject itself under another address. See docs/CREDIT.md.",
}


# ------------------------------------------------------------------------------------------------ types

@dataclass(frozen=True)
class ChainLog:
    """One decoded log; ``key`` (block, logIndex) orders and identifies it within a chain."""

    block: int
    log_index: int
    tx_hash: str
    contract: str
    event: str
    args: Mapping[str, Any] = field(compare=False, hash=False)

    @property
    def key(self) -> tuple[int, int]:
        return (self.block, self.log_index)


@dataclass(frozen=True)
class ContractRef:
    """A contract the profile reads: where, since when (its creation block, proven by its creation transaction)."""

    name: str
    address: str
    from_block: int
    deploy_tx: str
    code_hash: str

    def as_dict(self) -> dict[str, Any]:
        return {"address": self.address, "fromBlock": self.from_block, "deployTx": self.deploy_tx,
                "codeHash": self.code_hash}


@dataclass(frozen=True)
class ChainPoint:
    """The chain and the last block a profile covers."""

    chain_id: int
    genesis_hash: str
    to_block: int
    to_block_hash: str
    to_block_time: int


@dataclass(frozen=True)
class Profile:
    """Flat figures (dotted path → value) and, per path, the keys of the logs that contributed."""

    subject: str
    values: Mapping[str, Any]
    evidence: Mapping[str, frozenset[tuple[int, int]]]
    money: frozenset[str]


class ProfileMismatch(IotSettleError):
    """A credit profile file does not match what the chain says."""


class _Refused(ChainError):
    """The node answered with a JSON-RPC error (as opposed to not answering)."""


# ------------------------------------------------------------------------------------------------ derivation

class _Figures:
    """Accumulates figures by dotted path, with their evidence."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.evidence: dict[str, set[tuple[int, int]]] = defaultdict(set)
        self.money: set[str] = set()

    def _note(self, path: str, logs: Iterable[ChainLog]) -> None:
        self.evidence[path].update(entry.key for entry in logs)

    def zero(self, *paths: str) -> None:
        for path in paths:
            self.values.setdefault(path, 0)

    def add(self, path: str, amount: int, *logs: ChainLog) -> None:
        self.values[path] = self.values.get(path, 0) + amount
        self._note(path, logs)

    def money_add(self, path: str, token: str, amount: int, *logs: ChainLog) -> None:
        full = f"{path}.{token}"
        self.money.add(full)
        self.add(full, amount, *logs)

    def set(self, path: str, value: Any, *logs: ChainLog) -> None:
        self.values[path] = value
        self._note(path, logs)

    def maximum(self, path: str, value: int, *logs: ChainLog) -> None:
        if value >= self.values.get(path, 0):
            self.values[path] = value
            self.evidence[path] = {entry.key for entry in logs}

    def ratio(self, path: str, numerator: str, denominator_paths: Sequence[str]) -> None:
        denominator = sum(int(self.values.get(p, 0)) for p in denominator_paths)
        self.values[path] = None if denominator == 0 else int(self.values.get(numerator, 0)) * BPS // denominator
        for p in (numerator, *denominator_paths):
            self.evidence[path].update(self.evidence.get(p, ()))


@lru_cache(maxsize=65_536)
def _checksum(address: str) -> str:
    """EIP-55 form, cached: each call hashes, and a big profile names the same few addresses thousands of times."""
    return to_checksum_address(address)


def _device_of_id(target_id: int) -> str:
    """The device of an agreement / policy id: its top 160 bits."""
    return _checksum(f"0x{target_id >> 96:040x}")


def _hex_id(value: int) -> str:
    return hex(int(value))


def payees_of(subject: str, logs: Sequence[ChainLog]) -> set[str]:
    """The subject and the payout accounts of its accepted loans: payments to those are the subject's income
    (a borrower names its loan's account as seller of escrows and beneficiary of crop cover)."""
    loans = {int(e.args["loanId"]) for e in logs if e.event == "LoanOffered" and e.args["borrower"] == subject}
    return {subject} | {e.args["account"] for e in logs
                        if e.event == "LoanAccepted" and int(e.args["loanId"]) in loans}


def follow_ups(subject: str, logs: Sequence[ChainLog]) -> dict[str, dict[str, tuple[tuple[str, ...], list[Any]]]]:
    """What to fetch after the creation events: per contract, per purpose, (event names, topic1 values).

    Pure, and shared by :func:`scan` so the fetching and the derivation agree on which ids concern the subject.
    The answer grows with ``logs`` (a loan's LoanAccepted names its payout account, which may be the seller of
    escrows): :func:`scan` asks again until nothing new is named.
    """
    subject = to_checksum_address(subject)
    payees = payees_of(subject, logs)
    devices = sorted({e.args["device"] for e in logs if e.event == "DeviceRegistered" and e.args["owner"] == subject})
    device_set = set(devices)
    agreements, escrows, policies, covers, loans = set(), set(), set(), set(), set()
    cover_seasons: set[int] = set()
    season_pool = {int(e.args["seasonId"]): int(e.args["poolId"]) for e in logs if e.event == "SeasonCreated"}
    pool_token = {int(e.args["poolId"]): e.args["token"] for e in logs if e.event == "PoolCreated"}
    for e in logs:
        a = e.args
        if e.event == "AgreementOffered" and (a["consumer"] == subject or a["device"] in device_set):
            agreements.add(int(a["agreementId"]))
        elif e.event == "EscrowCreated" and (a["seller"] in payees or a["device"] in device_set):
            escrows.add(int(a["escrowId"]))
        elif e.event == "PolicyOffered" and (a["holder"] == subject or a["vehicle"] in device_set):
            policies.add(int(a["policyId"]))
        elif e.event == "CoverBought" and (a["buyer"] == subject or a["beneficiary"] in payees):
            covers.add(int(a["policyId"]))
            cover_seasons.add(int(a["seasonId"]))
        elif e.event == "LoanOffered" and a["borrower"] == subject:
            loans.add(int(a["loanId"]))
    return {
        "DeviceRegistry": {"identity": (("KeyRotated", "DeviceRevoked"), list(devices))},
        "MeteredBilling": {"agreements": (("AgreementAccepted", "ToppedUp", "ReadingSettled", "AgreementSuspended",
                                           "AgreementResumed", "AgreementClosed", "OfferCancelled"), sorted(agreements))},
        "DeliveryEscrow": {"escrows": (("DeliveryConfirmed", "EscrowRefunded", "EscrowCancelled"), sorted(escrows))},
        "MotorInsurance": {"policies": (("PolicyAccepted", "PolicyToppedUp", "PremiumCharged", "PolicyLapsed",
                                         "PolicyReinstated", "PolicyClosed", "PolicyCancelled"), sorted(policies))},
        "CropInsurance": {"covers": (("PayoutSent",), sorted(covers)),
                          "seasons": (("SeasonFinalized",), sorted(cover_seasons)),
                          "credits": (("Credited",), sorted({pool_token[season_pool[s]] for s in cover_seasons
                                                              if season_pool.get(s) in pool_token})),
                          "stations": (("ObservationRecorded",), list(devices))},
        "LoanBook": {"loans": (("LoanAccepted", "Repaid", "LoanRepaid", "LoanCancelled"), sorted(loans))},
    }


class _Spans:
    """Suspensions (or lapses) per target: count the seconds from each start to its end, or to the end block."""

    def __init__(self, f: _Figures, prefix: str, seconds: str, longest: str, still: str) -> None:
        self._f = f
        self._open: dict[int, tuple[int, ChainLog]] = {}
        self._paths = (f"{prefix}.{seconds}", f"{prefix}.{longest}", f"{prefix}.{still}")
        f.zero(*self._paths)

    def begin(self, target: int, time: int, entry: ChainLog) -> None:
        self._open[target] = (time, entry)

    def end(self, target: int, time: int, entry: ChainLog) -> None:
        started = self._open.pop(target, None)
        if started is not None:
            self._count(time - started[0], started[1], entry)

    def close(self, end_time: int) -> None:
        """Spans still open at the end block count up to its time."""
        for _target, (start, entry) in sorted(self._open.items()):
            self._f.add(self._paths[2], 1, entry)
            self._count(end_time - start, entry)

    def _count(self, seconds: int, *logs: ChainLog) -> None:
        self._f.add(self._paths[0], seconds, *logs)
        self._f.maximum(self._paths[1], seconds, *logs)


@dataclass
class _World:
    """Who is who, from the creation events; what the section derivations share."""

    subject: str
    ordered: list[ChainLog]
    times: Mapping[int, int]
    end_time: int
    payees: set[str] = field(default_factory=set)
    devices: dict[str, ChainLog] = field(default_factory=dict)
    agreements: dict[int, ChainLog] = field(default_factory=dict)
    escrows: dict[int, ChainLog] = field(default_factory=dict)
    policies: dict[int, ChainLog] = field(default_factory=dict)
    pool_token: dict[int, str] = field(default_factory=dict)
    season_pool: dict[int, int] = field(default_factory=dict)
    covers: dict[int, ChainLog] = field(default_factory=dict)
    loans: dict[int, ChainLog] = field(default_factory=dict)
    #: (tx, log index, target) of charges the prepaid balance could not cover (a suspension / lapse log follows).
    ran_dry: set[tuple[str, int, int]] = field(default_factory=set)

    def time_of(self, entry: ChainLog) -> int:
        try:
            return int(self.times[entry.block])
        except KeyError:
            raise ChainError(f"no timestamp for block {entry.block} (needed by {entry.event})") from None

    def of(self, contract: str, id_field: str, ids: Mapping[int, Any] | set[int]) -> Iterable[tuple[int, ChainLog]]:
        """The logs of ``contract`` whose ``id_field`` is one of ``ids``, in chain order."""
        for e in self.ordered:
            if e.contract == contract and id_field in e.args and int(e.args[id_field]) in ids:
                yield int(e.args[id_field]), e


def _world(subject: str, ordered: list[ChainLog], times: Mapping[int, int], end_time: int) -> _World:
    w = _World(subject, ordered, times, end_time, payees_of(subject, ordered))
    for e in ordered:
        a = e.args
        match e.event:
            case "DeviceRegistered" if a["owner"] == subject:
                w.devices.setdefault(a["device"], e)
            case "AgreementOffered":
                w.agreements[int(a["agreementId"])] = e
            case "EscrowCreated":
                w.escrows[int(a["escrowId"])] = e
            case "PolicyOffered":
                w.policies[int(a["policyId"])] = e
            case "PoolCreated":
                w.pool_token[int(a["poolId"])] = a["token"]
            case "SeasonCreated":
                w.season_pool[int(a["seasonId"])] = int(a["poolId"])
            case "CoverBought" if a["buyer"] == subject or a["beneficiary"] in w.payees:
                w.covers[int(a["policyId"])] = e
            case "LoanOffered" if a["borrower"] == subject:
                w.loans[int(a["loanId"])] = e
            case "AgreementSuspended" | "PolicyLapsed":
                target = int(a["agreementId"] if e.event == "AgreementSuspended" else a["policyId"])
                w.ran_dry.add((e.tx_hash, e.log_index - 1, target))
    return w


def derive(subject: str, logs: Sequence[ChainLog], times: Mapping[int, int], end: ChainPoint) -> Profile:
    """The figures of ``subject`` from decoded logs (any superset of what concerns it, in any order).

    ``times`` maps block number → block timestamp for at least the blocks of :data:`TIMED_EVENTS` logs.
    """
    w = _world(to_checksum_address(subject), sorted(logs, key=lambda e: e.key), times, end.to_block_time)
    f = _Figures()
    _devices(f, w)
    _consumer(f, w)
    _seller(f, w)
    _motor(f, w)
    _crop(f, w)
    _loans(f, w)
    evidence = {path: frozenset(keys) for path, keys in f.evidence.items() if path in f.values and keys}
    return Profile(w.subject, dict(f.values), evidence, frozenset(f.money))


def _settled_device(f: _Figures, w: _World, e: ChainLog) -> str | None:
    """The owned device a settled event names, after adding its volume; None for other events and devices."""
    a = e.args
    match e.event:
        case "ReadingSettled":
            device = _device_of_id(int(a["agreementId"]))
            offer = w.agreements.get(int(a["agreementId"]))
            if device in w.devices and offer is not None:
                f.money_add(f"devices.items.{device}.settled.billed", offer.args["token"], int(a["amount"]), e)
                return device
        case "DeliveryConfirmed":
            created = w.escrows.get(int(a["escrowId"]))
            if created is not None and created.args["device"] in w.devices:
                base = f"devices.items.{created.args['device']}.settled"
                f.add(f"{base}.deliveries", 1, e)
                f.money_add(f"{base}.released", created.args["token"], int(a["toSeller"]), e)
                return str(created.args["device"])
        case "PremiumCharged":
            device = _device_of_id(int(a["policyId"]))
            if device in w.devices:
                f.add(f"devices.items.{device}.settled.metres", int(a["metres"]), e)
                return device
        case "ObservationRecorded" if a["station"] in w.devices:
            # The rainfall register is cumulative: the volume is its rise over the range.
            path = f"devices.items.{a['station']}.settled"
            low, high = f.values.get(f"{path}.rainfallFrom"), int(a["rainfall"])
            f.set(f"{path}.rainfallFrom", high if low is None else min(int(low), high), e)
            f.set(f"{path}.rainfall", high - int(f.values[f"{path}.rainfallFrom"]), e)
            return str(a["station"])
    return None


def _devices(f: _Figures, w: _World) -> None:
    f.zero("devices.count", "devices.revoked", "devices.keyRotations")
    for device, reg in w.devices.items():
        kind = KIND_NAMES.get(int(reg.args["kind"]), str(int(reg.args["kind"])))
        base = f"devices.items.{device}"
        f.add("devices.count", 1, reg)
        f.add(f"devices.byKind.{kind}", 1, reg)
        f.set(f"{base}.kind", kind, reg)
        f.set(f"{base}.registeredBlock", reg.block, reg)
        f.set(f"{base}.registeredAt", w.time_of(reg), reg)
        f.zero(f"{base}.keyRotations", f"{base}.revokedAt", f"{base}.settled.events")
    settled: dict[str, list[ChainLog]] = defaultdict(list)
    revoked: dict[str, ChainLog] = {}
    for e in w.ordered:
        if e.event in ("KeyRotated", "DeviceRevoked") and e.args["device"] in w.devices:
            device = e.args["device"]
            if e.event == "KeyRotated":
                f.add("devices.keyRotations", 1, e)
                f.add(f"devices.items.{device}.keyRotations", 1, e)
            elif device not in revoked:
                revoked[device] = e
                f.add("devices.revoked", 1, e)
                f.set(f"devices.items.{device}.revokedAt", w.time_of(e), e)
            continue
        named = _settled_device(f, w, e)
        if named is not None:
            settled[named].append(e)
            f.add(f"devices.items.{named}.settled.events", 1, e)
    for device, reg in w.devices.items():
        _uptime(f, w, f"devices.items.{device}.uptime", reg, revoked.get(device), settled.get(device, []))


def _uptime(f: _Figures, w: _World, base: str, reg: ChainLog, revoked: ChainLog | None,
            settled: list[ChainLog]) -> None:
    start = w.time_of(reg)
    stop = w.time_of(revoked) if revoked is not None else w.end_time
    size = HOUR if stop - start < YOUNG_DEVICE_SECONDS else DAY
    period = [reg] if revoked is None else [reg, revoked]
    f.set(f"{base}.bucket", "hour" if size == HOUR else "day", *period)
    f.set(f"{base}.buckets", max(stop // size - start // size + 1, 1), *period)
    first_of_bucket: dict[int, ChainLog] = {}
    for e in settled:
        t = w.time_of(e)
        if start <= t <= stop:
            first_of_bucket.setdefault(t // size, e)
    f.set(f"{base}.active", len(first_of_bucket), *first_of_bucket.values())
    f.ratio(f"{base}.bps", f"{base}.active", [f"{base}.buckets"])


def _consumer(f: _Figures, w: _World) -> None:
    c = "consumer"
    f.zero(*(f"{c}.{k}" for k in ("agreements", "accepted", "cancelled", "closed", "topUps", "readings",
                                  "readingsPaidOnTime", "suspensions", "resumptions")))
    spans = _Spans(f, c, "suspendedSeconds", "longestSuspensionSeconds", "suspendedNow")
    mine = {i for i, e in w.agreements.items() if e.args["consumer"] == w.subject}
    for agreement_id, e in w.of("MeteredBilling", "agreementId", mine):
        a = e.args
        token = w.agreements[agreement_id].args["token"]
        item = f"{c}.items.{_hex_id(agreement_id)}"
        match e.event:
            case "AgreementOffered":
                f.add(f"{c}.agreements", 1, e)
                for key in ("provider", "device", "token"):
                    f.set(f"{item}.{key}", a[key], e)
                f.zero(f"{item}.readings", f"{item}.readingsPaidOnTime", f"{item}.suspensions")
            case "AgreementAccepted" | "ToppedUp":
                top_up = e.event == "ToppedUp"
                f.add(f"{c}.topUps" if top_up else f"{c}.accepted", 1, e)
                amount = int(a["amount"] if top_up else a["deposit"])
                f.money_add(f"{c}.deposited", token, amount, e)
                f.money_add(f"{item}.deposited", token, amount, e)
                if top_up and int(a["arrearsPaid"]):
                    f.money_add(f"{c}.arrearsPaid", token, int(a["arrearsPaid"]), e)
            case "ReadingSettled":
                for path in (c, item):
                    f.add(f"{path}.readings", 1, e)
                    f.money_add(f"{path}.billed", token, int(a["amount"]), e)
                    if (e.tx_hash, e.log_index, agreement_id) not in w.ran_dry:
                        f.add(f"{path}.readingsPaidOnTime", 1, e)
            case "AgreementSuspended":
                f.add(f"{c}.suspensions", 1, e)
                f.add(f"{item}.suspensions", 1, e)
                f.money_add(f"{c}.arrearsIncurred", token, int(a["arrears"]), e)
                spans.begin(agreement_id, w.time_of(e), e)
            case "AgreementResumed":
                f.add(f"{c}.resumptions", 1, e)
                spans.end(agreement_id, w.time_of(e), e)
            case "AgreementClosed":
                f.add(f"{c}.closed", 1, e)
            case "OfferCancelled":
                f.add(f"{c}.cancelled", 1, e)
    spans.close(w.end_time)
    f.ratio(f"{c}.paidOnTimeBps", f"{c}.readingsPaidOnTime", [f"{c}.readings"])


_ESCROW_OUTCOMES = {"DeliveryConfirmed": "delivered", "EscrowRefunded": "refunded", "EscrowCancelled": "cancelled"}


def _seller(f: _Figures, w: _World) -> None:
    s = "seller"
    f.zero(*(f"{s}.{k}" for k in ("escrows", "delivered", "refunded", "cancelled", "open", "overdue")))
    mine = {i for i, e in w.escrows.items() if e.args["seller"] in w.payees}
    outcome: dict[int, ChainLog] = {}
    for escrow_id, e in w.of("DeliveryEscrow", "escrowId", mine):
        a = e.args
        token = w.escrows[escrow_id].args["token"]
        item = f"{s}.items.{escrow_id}"
        if e.event == "EscrowCreated":
            f.add(f"{s}.escrows", 1, e)
            f.money_add(f"{s}.funded", token, int(a["amount"]), e)
            for key in ("buyer", "seller", "device", "token"):
                f.set(f"{item}.{key}", a[key], e)
            f.set(f"{item}.amount", str(int(a["amount"])), e)
            f.set(f"{item}.deadline", int(a["deadline"]), e)
        elif e.event in _ESCROW_OUTCOMES and escrow_id not in outcome:
            outcome[escrow_id] = e
            f.add(f"{s}.{_ESCROW_OUTCOMES[e.event]}", 1, e)
            f.set(f"{item}.outcome", _ESCROW_OUTCOMES[e.event], e)
            if e.event == "DeliveryConfirmed":
                f.money_add(f"{s}.released", token, int(a["toSeller"]), e)
                if int(a["toBuyer"]):
                    f.money_add(f"{s}.penalties", token, int(a["toBuyer"]), e)
    for escrow_id in sorted(mine - set(outcome)):
        created = w.escrows[escrow_id]
        state = "overdue" if int(created.args["deadline"]) < w.end_time else "open"
        f.add(f"{s}.{state}", 1, created)
        f.set(f"{s}.items.{escrow_id}.outcome", state, created)
    f.ratio(f"{s}.onTimeBps", f"{s}.delivered", [f"{s}.delivered", f"{s}.refunded", f"{s}.overdue"])


def _motor(f: _Figures, w: _World) -> None:
    m = "motor"
    f.zero(*(f"{m}.{k}" for k in ("policies", "accepted", "cancelled", "closed", "topUps", "reports",
                                  "reportsPaidOnTime", "metres", "harshBraking", "speeding", "lapses",
                                  "reinstatements")))
    spans = _Spans(f, m, "lapsedSeconds", "longestLapseSeconds", "lapsedNow")
    held = {i for i, e in w.policies.items() if e.args["holder"] == w.subject}
    for policy_id, e in w.of("MotorInsurance", "policyId", held):
        a = e.args
        token = w.policies[policy_id].args["token"]
        item = f"{m}.items.{_hex_id(policy_id)}"
        match e.event:
            case "PolicyOffered":
                f.add(f"{m}.policies", 1, e)
                for key in ("insurer", "vehicle", "token"):
                    f.set(f"{item}.{key}", a[key], e)
                f.zero(f"{item}.reports", f"{item}.metres", f"{item}.lapses")
            case "PolicyAccepted" | "PolicyToppedUp":
                top_up = e.event == "PolicyToppedUp"
                f.add(f"{m}.topUps" if top_up else f"{m}.accepted", 1, e)
                f.money_add(f"{m}.deposited", token, int(a["amount"] if top_up else a["deposit"]), e)
            case "PremiumCharged":
                for path in (m, item):
                    f.add(f"{path}.reports", 1, e)
                    f.add(f"{path}.metres", int(a["metres"]), e)
                    f.money_add(f"{path}.premiums", token, int(a["amount"]), e)
                f.add(f"{m}.harshBraking", int(a["harshBraking"]), e)
                f.add(f"{m}.speeding", int(a["speeding"]), e)
                if (e.tx_hash, e.log_index, policy_id) not in w.ran_dry:
                    f.add(f"{m}.reportsPaidOnTime", 1, e)
            case "PolicyLapsed":
                f.add(f"{m}.lapses", 1, e)
                f.add(f"{item}.lapses", 1, e)
                f.money_add(f"{m}.arrearsIncurred", token, int(a["arrears"]), e)
                spans.begin(policy_id, w.time_of(e), e)
            case "PolicyReinstated":
                f.add(f"{m}.reinstatements", 1, e)
                spans.end(policy_id, w.time_of(e), e)
            case "PolicyClosed":
                f.add(f"{m}.closed", 1, e)
            case "PolicyCancelled":
                f.add(f"{m}.cancelled", 1, e)
    spans.close(w.end_time)
    f.ratio(f"{m}.paidOnTimeBps", f"{m}.reportsPaidOnTime", [f"{m}.reports"])


def _crop(f: _Figures, w: _World) -> None:
    k = "crop"
    f.zero(*(f"{k}.{x}" for x in ("covers", "payouts", "payoutsCredited", "expired", "pending")))
    settled: set[int] = set()
    # a payout whose push failed: the contract's Credited of the beneficiary right after its PayoutSent
    credited_at = {(e.tx_hash, e.log_index) for e in w.ordered if e.contract == "CropInsurance" and e.event == "Credited"}
    untriggered = {int(e.args["seasonId"]): e for e in w.ordered
                   if e.contract == "CropInsurance" and e.event == "SeasonFinalized" and not e.args["triggered"]}
    for cover_id, e in w.of("CropInsurance", "policyId", w.covers):
        a = e.args
        bought = w.covers[cover_id]
        token = w.pool_token.get(w.season_pool.get(int(bought.args["seasonId"]), -1), "unknown")
        item = f"{k}.items.{cover_id}"
        match e.event:
            case "CoverBought":
                f.add(f"{k}.covers", 1, e)
                f.money_add(f"{k}.cover", token, int(a["cover"]), e)
                if a["buyer"] == w.subject:
                    f.money_add(f"{k}.premiumsPaid", token, int(a["premium"]), e)
                f.set(f"{item}.seasonId", int(a["seasonId"]), e)
                f.set(f"{item}.beneficiary", a["beneficiary"], e)
                f.set(f"{item}.cover", str(int(a["cover"])), e)
                f.set(f"{item}.outcome", "pending", e)
            case "PayoutSent":
                settled.add(cover_id)
                f.add(f"{k}.payouts", 1, e)
                to = ("payoutsReceived" if a["beneficiary"] == w.subject
                      else "payoutsToLoanAccounts" if a["beneficiary"] in w.payees else "payoutsToOthers")
                to = f"{k}.{to}"
                f.money_add(to, token, int(a["amount"]), e)
                f.set(f"{item}.outcome", "paid", e)
                if (e.tx_hash, e.log_index + 1) in credited_at:
                    f.add(f"{k}.payoutsCredited", 1, e)
    for cover_id in sorted(set(w.covers) - settled):
        bought = w.covers[cover_id]
        finalized = untriggered.get(int(bought.args["seasonId"]))
        if finalized is not None:
            f.add(f"{k}.expired", 1, bought, finalized)
            f.set(f"{k}.items.{cover_id}.outcome", "expired", bought, finalized)
        else:
            f.add(f"{k}.pending", 1, bought)


def _loans(f: _Figures, w: _World) -> None:
    b = "loans"
    f.zero(*(f"{b}.{x}" for x in ("offered", "taken", "cancelled", "fullyRepaid", "repaidByDueBy", "repaidLate",
                                  "overdue")))
    taken: dict[int, ChainLog] = {}
    repaid_in_full: set[int] = set()
    repaid: dict[int, list[ChainLog]] = defaultdict(list)
    for loan_id, e in w.of("LoanBook", "loanId", w.loans):
        a = e.args
        offer = w.loans[loan_id]
        token = offer.args["token"]
        item = f"{b}.items.{loan_id}"
        match e.event:
            case "LoanOffered":
                f.add(f"{b}.offered", 1, e)
                f.set(f"{item}.lender", a["lender"], e)
                f.set(f"{item}.token", token, e)
                for key in ("principal", "repayment"):
                    f.set(f"{item}.{key}", str(int(a[key])), e)
                f.set(f"{item}.dueBy", int(a["dueBy"]), e)
                f.set(f"{item}.status", "offered", e)
            case "LoanAccepted":
                taken[loan_id] = e
                f.add(f"{b}.taken", 1, e)
                f.money_add(f"{b}.principal", token, int(offer.args["principal"]), offer, e)
                f.money_add(f"{b}.repaymentDue", token, int(offer.args["repayment"]), offer, e)
                f.set(f"{item}.status", "active", e)
            case "LoanCancelled":
                f.add(f"{b}.cancelled", 1, e)
                f.set(f"{item}.status", "cancelled", e)
            case "Repaid":
                repaid[loan_id].append(e)
                f.money_add(f"{b}.repaid", token, int(a["amount"]), e)
                f.set(f"{item}.repaid", str(sum(int(r.args["amount"]) for r in repaid[loan_id])), e)
            case "LoanRepaid" if loan_id not in repaid_in_full:
                repaid_in_full.add(loan_id)
                f.add(f"{b}.fullyRepaid", 1, e)
                on_time = w.time_of(e) <= int(offer.args["dueBy"])
                f.add(f"{b}.repaidByDueBy" if on_time else f"{b}.repaidLate", 1, offer, e)
                f.set(f"{item}.status", "repaid" if on_time else "repaid late", offer, e)
    for loan_id, accepted in sorted(taken.items()):
        offer = w.loans[loan_id]
        owed = int(offer.args["repayment"]) - sum(int(r.args["amount"]) for r in repaid[loan_id])
        if owed > 0:
            f.money_add(f"{b}.outstanding", offer.args["token"], owed, offer, accepted, *repaid[loan_id])
        if loan_id not in repaid_in_full and int(offer.args["dueBy"]) < w.end_time:
            f.add(f"{b}.overdue", 1, offer, accepted)
            f.set(f"{b}.items.{loan_id}.status", "overdue", offer, accepted)
    f.ratio(f"{b}.onTimeBps", f"{b}.repaidByDueBy", [f"{b}.fullyRepaid", f"{b}.overdue"])


# ------------------------------------------------------------------------------------------------ export

#: Containers present in every export even when empty (a stable shape for readers).
_SECTIONS = ("devices.items", "devices.byKind", "consumer.items", "seller.items", "motor.items", "crop.items",
             "loans.items", "consumer.deposited", "consumer.billed", "consumer.arrearsIncurred", "consumer.arrearsPaid",
             "seller.funded", "seller.released", "seller.penalties", "motor.deposited", "motor.premiums",
             "motor.arrearsIncurred", "crop.cover", "crop.premiumsPaid", "crop.payoutsReceived", "crop.payoutsToLoanAccounts",
             "crop.payoutsToOthers",
             "loans.principal", "loans.repaymentDue", "loans.repaid", "loans.outstanding")


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for section in _SECTIONS:
        node = root
        for part in section.split("."):
            node = node.setdefault(part, {})
    for path, value in flat.items():
        node = root
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return root


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted path → leaf (an empty map is a leaf ``{}``), the inverse of the export's nesting."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def document(profile: Profile, point: ChainPoint, contracts: Mapping[str, ContractRef],
             logs: Sequence[ChainLog]) -> dict[str, Any]:
    """The exportable profile: header, definitions, figures and compact evidence."""
    by_key = {e.key: e for e in logs}
    used = sorted({key for keys in profile.evidence.values() for key in keys})
    index = {key: i for i, key in enumerate(used)}
    values = {path: str(v) if path in profile.money else v for path, v in profile.values.items()}
    return {
        "profileVersion": PROFILE_VERSION,
        "subject": profile.subject,
        "chain": {"chainId": point.chain_id, "genesisHash": point.genesis_hash},
        "range": {"fromBlock": min((c.from_block for c in contracts.values()), default=0), "toBlock": point.to_block,
                  "toBlockHash": point.to_block_hash, "toBlockTime": point.to_block_time},
        "contracts": {name: ref.as_dict() for name, ref in sorted(contracts.items())},
        "definitions": DEFINITIONS,
        "figures": _nest(values),
        "evidence": {
            "logs": [[by_key[key].tx_hash, key[1], key[0]] for key in used],
            "figures": {path: sorted(index[key] for key in keys) for path, keys in sorted(profile.evidence.items())},
        },
    }


def canonical_json(doc: Mapping[str, Any]) -> str:
    """The one byte form of a profile: sorted keys, fixed indentation, trailing newline."""
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def first_difference(claimed: Mapping[str, Any], derived: Mapping[str, Any]) -> str | None:
    """A sentence naming the first figure (or header field) where ``claimed`` differs from ``derived``."""
    for section in ("profileVersion", "subject", "chain", "range", "contracts"):
        if claimed.get(section) != derived.get(section):
            return f"{section}: the file says {json.dumps(claimed.get(section), sort_keys=True)}, " \
                   f"the chain gives {json.dumps(derived.get(section), sort_keys=True)}"
    mine, theirs = flatten(claimed.get("figures") or {}), flatten(derived["figures"])
    for path in sorted(set(mine) | set(theirs)):
        if path not in theirs:
            return f"figure {path}: the file says {json.dumps(mine[path])}, the chain has no such figure"
        if mine.get(path, "<missing>") != theirs[path]:
            shown = json.dumps(mine[path]) if path in mine else "nothing"
            return f"figure {path}: the file says {shown}, the chain gives {json.dumps(theirs[path])}"
    claimed_ev, derived_ev = claimed.get("evidence") or {}, derived["evidence"]
    claimed_logs, derived_logs = claimed_ev.get("logs") or [], derived_ev["logs"]

    def cited(logs: Sequence[Any], indices: Any) -> list[Any]:
        try:
            return [logs[i] for i in indices]
        except (IndexError, TypeError):
            return ["<bad index>"]

    c_figs, d_figs = claimed_ev.get("figures") or {}, derived_ev["figures"]
    for path in sorted(set(c_figs) | set(d_figs)):
        if cited(claimed_logs, c_figs.get(path, [])) != cited(derived_logs, d_figs.get(path, [])):
            return f"evidence of figure {path}: the logs cited differ from the chain's"
    if claimed_logs != derived_logs:
        return "evidence: the log table differs from the chain's"
    for key in sorted(set(claimed) | set(derived)):
        if claimed.get(key) != derived.get(key):
            return f"{key}: differs from the re-derived profile"
    return None


# ------------------------------------------------------------------------------------------------ fetching

ProgressFn = Callable[[str], None]


def _abi_type(entry: Mapping[str, Any]) -> str:
    kind = str(entry["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in entry["components"]) + ")" + kind[len("tuple"):]
    return kind


def _normalise(abi_type: str, value: Any) -> Any:
    if abi_type == "address":
        return _checksum(value)
    return value


def _word(abi_type: str, word: bytes) -> Any:
    """One static ABI word; the fast path for the events a profile reads (eth_abi handles the rest)."""
    if abi_type.startswith("uint"):
        return int.from_bytes(word, "big")
    if abi_type.startswith("int"):
        return int.from_bytes(word, "big", signed=True)
    if abi_type == "address":
        return _checksum("0x" + word[12:].hex())
    if abi_type == "bool":
        return word != bytes(32)
    return bytes(word)  # bytes32


_STATIC = {"address", "bool", "bytes32"} | {f"uint{n}" for n in range(8, 257, 8)} | {f"int{n}" for n in range(8, 257, 8)}


@dataclass(frozen=True)
class _EventAbi:
    name: str
    topic0: str
    indexed: tuple[tuple[str, str], ...]
    data: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> _EventAbi:
        types = [_abi_type(i) for i in entry["inputs"]]
        topic0 = "0x" + keccak(f"{entry['name']}({','.join(types)})".encode()).hex()
        indexed = tuple((i["name"], t) for i, t in zip(entry["inputs"], types, strict=True) if i.get("indexed"))
        data = tuple((i["name"], t) for i, t in zip(entry["inputs"], types, strict=True) if not i.get("indexed"))
        return cls(entry["name"], topic0, indexed, data)

    def decode(self, topics: Sequence[str], data: str) -> dict[str, Any]:
        args: dict[str, Any] = {}
        for (name, abi_type), topic in zip(self.indexed, topics[1:], strict=True):
            raw = bytes.fromhex(topic[2:])
            # An indexed dynamic value is only its hash: kept as bytes.
            args[name] = _word(abi_type, raw) if abi_type in _STATIC else raw
        blob = bytes.fromhex(data[2:])
        if all(t in _STATIC for _, t in self.data):
            for i, (name, abi_type) in enumerate(self.data):
                args[name] = _word(abi_type, blob[32 * i : 32 * i + 32])
            return args
        values = abi_decode([t for _, t in self.data], blob)
        for (name, abi_type), value in zip(self.data, values, strict=True):
            args[name] = _normalise(abi_type, value)
        return args


def _topic(value: int | str) -> str:
    if isinstance(value, str):
        return "0x" + bytes.fromhex(value[2:]).rjust(32, b"\0").hex()
    return "0x" + int(value).to_bytes(32, "big").hex()


class _Reader:
    """Raw JSON-RPC reads (eth_getLogs, block headers) without web3's per-field formatting: fast on big scans."""

    def __init__(self, w3: Any, progress: ProgressFn) -> None:
        self._w3 = w3
        self._progress = progress
        self.calls = 0

    def _request(self, method: str, params: list[Any]) -> Any:
        self.calls += 1
        try:
            response = self._w3.provider.make_request(method, params)
        except (OSError, ValueError, Web3Exception) as exc:
            raise ChainError(f"{method} failed: the node did not answer ({type(exc).__name__})") from None
        if "error" in response:
            error = response["error"]
            raise _Refused(f"{method} refused: {error.get('message', error) if isinstance(error, dict) else error}")
        return response["result"]

    def logs(self, address: str, start: int, stop: int, topics: list[Any]) -> list[dict[str, Any]]:
        query = {"address": address, "fromBlock": hex(start), "toBlock": hex(stop), "topics": topics}
        try:
            return list(self._request("eth_getLogs", [query]))
        except _Refused:
            if start >= stop:
                raise
        # Providers cap the results or the span of one call: try each half. A refusal that persists down to one
        # block propagates from the first leaf, so this costs at most log2(span) extra calls.
        middle = (start + stop) // 2
        return self.logs(address, start, middle, topics) + self.logs(address, middle + 1, stop, topics)

    def header(self, block: int | str) -> dict[str, Any]:
        tag = block if isinstance(block, str) else hex(block)
        result = self._request("eth_getBlockByNumber", [tag, False])
        if result is None:
            raise ChainError(f"block {block} does not exist on this node")
        return dict(result)

    def block_times(self, blocks: Iterable[int]) -> dict[int, int]:
        wanted = sorted(set(blocks))
        out: dict[int, int] = {}
        batch = getattr(self._w3.provider, "make_batch_request", None)
        for i in range(0, len(wanted), BLOCKS_PER_BATCH):
            part = wanted[i : i + BLOCKS_PER_BATCH]
            results: Any = None
            if batch is not None and len(part) > 1:
                self.calls += 1
                try:
                    results = batch([("eth_getBlockByNumber", [hex(n), False]) for n in part])
                except (OSError, ValueError):
                    results = None
            if isinstance(results, list) and len(results) == len(part) and all("result" in r for r in results):
                for n, r in zip(part, results, strict=True):
                    out[n] = int(r["result"]["timestamp"], 16)
            else:
                for n in part:
                    out[n] = int(self.header(n)["timestamp"], 16)
            if len(wanted) > BLOCKS_PER_BATCH:
                self._progress(f"block times: {min(i + BLOCKS_PER_BATCH, len(wanted))}/{len(wanted)}")
        return out

    def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        try:
            result = self._request("eth_getTransactionReceipt", [tx_hash])
        except _Refused:
            return None
        return dict(result) if result else None

    def code_hash(self, address: str) -> str:
        code = self._request("eth_getCode", [address, "latest"])
        return "0x" + keccak(bytes.fromhex(str(code)[2:])).hex()


@dataclass(frozen=True)
class ScanStats:
    logs: int
    rpc_calls: int
    blocks_timed: int


class _Scanner:
    def __init__(self, reader: _Reader, contracts: Mapping[str, ContractRef], abis: Mapping[str, Sequence[Mapping[str, Any]]],
                 to_block: int, progress: ProgressFn) -> None:
        self._reader = reader
        self._contracts = contracts
        self._to_block = to_block
        self._progress = progress
        self._events: dict[str, dict[str, _EventAbi]] = {
            name: {e["name"]: _EventAbi.of(e) for e in abis[name] if e.get("type") == "event"} for name in contracts
        }

    def fetch(self, contract: str, events: Sequence[str], topics_after: Sequence[Any] = ()) -> list[ChainLog]:
        """``events`` of ``contract`` over its whole range, with further topic filters (None = any)."""
        ref = self._contracts.get(contract)
        if ref is None:
            return []
        abis = self._events[contract]
        known = [abis[n] for n in events if n in abis]
        if not known:
            return []
        by_topic = {e.topic0: e for e in known}
        topics = [list(by_topic), *topics_after]
        out: list[ChainLog] = []
        start = ref.from_block
        total = self._to_block - ref.from_block + 1
        while start <= self._to_block:
            stop = min(start + LOG_CHUNK_BLOCKS - 1, self._to_block)
            for raw in self._reader.logs(ref.address, start, stop, topics):
                if raw.get("removed"):
                    continue
                event = by_topic.get(str(raw["topics"][0]).lower())
                if event is None:
                    continue
                out.append(ChainLog(int(raw["blockNumber"], 16), int(raw["logIndex"], 16), str(raw["transactionHash"]),
                                    contract, event.name, event.decode(raw["topics"], raw["data"])))
            if total > LOG_CHUNK_BLOCKS:
                self._progress(f"{contract} {', '.join(events)}: blocks {ref.from_block}..{stop} "
                               f"({(stop - ref.from_block + 1) * 100 // total}%)")
            start = stop + 1
        return out

    def fetch_ids(self, contract: str, events: Sequence[str], ids: Sequence[Any]) -> list[ChainLog]:
        out: list[ChainLog] = []
        for i in range(0, len(ids), IDS_PER_QUERY):
            out += self.fetch(contract, events, [[_topic(v) for v in ids[i : i + IDS_PER_QUERY]]])
        return out


def scan(w3: Any, subject: str, contracts: Mapping[str, ContractRef], abis: Mapping[str, Sequence[Mapping[str, Any]]],
         to_block: int, progress: ProgressFn = lambda _m: None) -> tuple[list[ChainLog], dict[int, int], ScanStats]:
    """Every log that concerns ``subject`` up to ``to_block``, and the block times the figures need."""
    subject = to_checksum_address(subject)
    reader = _Reader(w3, progress)
    scanner = _Scanner(reader, contracts, abis, to_block, progress)
    owner_topic = _topic(subject)
    progress(f"scanning {len(contracts)} contracts up to block {to_block} for {subject}")
    logs = scanner.fetch("DeviceRegistry", ["DeviceRegistered"], [None, owner_topic])
    logs += scanner.fetch("MeteredBilling", ["AgreementOffered"])
    logs += scanner.fetch("DeliveryEscrow", ["EscrowCreated"])
    logs += scanner.fetch("MotorInsurance", ["PolicyOffered"])
    logs += scanner.fetch("CropInsurance", ["PoolCreated", "SeasonCreated", "CoverBought"])
    logs += scanner.fetch("LoanBook", ["LoanOffered"], [None, None, owner_topic])
    fetched: dict[tuple[str, str], set[Any]] = defaultdict(set)
    while True:  # twice at most: the second round follows the escrows and covers paid to loan accounts
        found = False
        for contract, purposes in follow_ups(subject, logs).items():
            for purpose, (events, ids) in purposes.items():
                new = [i for i in ids if i not in fetched[(contract, purpose)]]
                if new:
                    found = True
                    fetched[(contract, purpose)].update(new)
                    logs += scanner.fetch_ids(contract, events, new)
        if not found:
            break
    logs.sort(key=lambda e: e.key)
    timed = {e.block for e in logs if e.event in TIMED_EVENTS}
    if len(timed) > BLOCKS_PER_BATCH:
        progress(f"{len(logs)} logs; reading the time of {len(timed)} blocks")
    times = reader.block_times(timed)
    return logs, times, ScanStats(len(logs), reader.calls, len(times))


def _check_unchanged(w3: Any, point: ChainPoint) -> None:
    """The end block must still be the one the scan started from: a reorganisation during the scan could mix
    logs of two histories."""
    now = _Reader(w3, lambda _m: None).header(point.to_block)
    if str(now["hash"]) != point.to_block_hash:
        raise ChainError(f"block {point.to_block} was reorganised during the scan ({point.to_block_hash} → "
                         f"{now['hash']}); profile again, with --to-block a few blocks behind the head")


def chain_point(w3: Any, to_block: int | None) -> ChainPoint:
    """Chain id, genesis hash, and the number, hash and time of ``to_block`` (default: the latest block)."""
    reader = _Reader(w3, lambda _m: None)
    latest = reader.header("latest")
    latest_number = int(latest["number"], 16)
    if to_block is not None and to_block > latest_number:
        raise ChainError(f"block {to_block} is not mined yet (latest is {latest_number})")
    end = latest if to_block is None else reader.header(to_block)
    chain_id = int(reader._request("eth_chainId", []), 16)
    return ChainPoint(chain_id, str(reader.header(0)["hash"]), int(end["number"], 16), str(end["hash"]),
                      int(end["timestamp"], 16))


def contract_refs(w3: Any, deployments: Mapping[str, tuple[str, int, str]], to_block: int) -> dict[str, ContractRef]:
    """The profile's contracts (name → (address, deployment block, creation tx)) that exist at ``to_block``, with
    code hashes. Each creation transaction must have created that address in that block: a scan that started
    later than the contract's creation could leave out history, so the start is proven, not claimed."""
    reader = _Reader(w3, lambda _m: None)
    refs: dict[str, ContractRef] = {}
    for name in CONTRACTS:
        if name not in deployments:
            continue
        address, block, tx = deployments[name]
        if block > to_block:
            continue
        address = to_checksum_address(address)
        receipt = reader.receipt(tx)
        created = receipt.get("contractAddress") if receipt else None
        if not created or to_checksum_address(created) != address or int(receipt["blockNumber"], 16) != block:
            raise ProfileMismatch(f"contracts: {name} at {address} was not created by transaction {tx} in block "
                                  f"{block}, so its history may start elsewhere")
        refs[name] = ContractRef(name, address, int(block), tx, reader.code_hash(address))
    return refs


@dataclass(frozen=True)
class ProfileRun:
    document: dict[str, Any]
    stats: ScanStats
    seconds: float


def build(w3: Any, subject: str, point: ChainPoint, contracts: Mapping[str, ContractRef],
          abis: Mapping[str, Sequence[Mapping[str, Any]]], progress: ProgressFn = lambda _m: None) -> ProfileRun:
    """Scan, derive and assemble the exportable document."""
    started = time.perf_counter()
    logs, times, stats = scan(w3, subject, contracts, abis, point.to_block, progress)
    _check_unchanged(w3, point)
    profile = derive(subject, logs, times, point)
    doc = document(profile, point, contracts, logs)
    seconds = time.perf_counter() - started
    log.info("credit profile of %s: %d logs, %d RPC calls, %.2f s", subject, stats.logs, stats.rpc_calls, seconds)
    return ProfileRun(doc, stats, seconds)


def verify_document(w3: Any, claimed: Mapping[str, Any], abis: Mapping[str, Sequence[Mapping[str, Any]]],
                    progress: ProgressFn = lambda _m: None) -> ProfileRun:
    """Re-derive ``claimed``'s profile from the chain behind ``w3``; raise ProfileMismatch naming the first
    difference. Only the file and the node are used: the addresses and block range come from the file."""
    try:
        version = claimed["profileVersion"]
        subject = claimed["subject"]
        chain, rng, contracts = claimed["chain"], claimed["range"], claimed["contracts"]
        to_block = int(rng["toBlock"])
        deployments = {name: (str(c["address"]), int(c["fromBlock"]), str(c["deployTx"]))
                       for name, c in contracts.items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ProfileMismatch("this file is not a credit profile (chain, range, contracts or subject missing)") from None
    if version != PROFILE_VERSION:
        raise ProfileMismatch(f"profile version {version!r} is not understood here (this version reads {PROFILE_VERSION})")
    unknown = sorted(set(deployments) - set(CONTRACTS))
    if unknown:
        raise ProfileMismatch(f"contracts: {', '.join(unknown)} is not part of a credit profile")
    point = chain_point(w3, None)
    if point.chain_id != chain.get("chainId"):
        raise ProfileMismatch(f"chain: the file is for chain {chain.get('chainId')}, this node is chain {point.chain_id}")
    if point.genesis_hash != chain.get("genesisHash"):
        raise ProfileMismatch(f"chain: this node's genesis block is {point.genesis_hash}, the file's is "
                              f"{chain.get('genesisHash')} (another chain with the same id)")
    if to_block > point.to_block:
        raise ProfileMismatch(f"range: block {to_block} is not on this node yet (latest {point.to_block})")
    point = chain_point(w3, to_block)
    if point.to_block_hash != rng.get("toBlockHash"):
        raise ProfileMismatch(f"range: block {to_block} is {point.to_block_hash} on this node, the file was made at "
                              f"{rng.get('toBlockHash')} (a reorganised or different chain)")
    refs = contract_refs(w3, deployments, to_block)
    missing = sorted(set(deployments) - set(refs))
    if missing:
        raise ProfileMismatch(f"contracts: {', '.join(missing)} did not exist at block {to_block}")
    run = build(w3, subject, point, refs, abis, progress)
    difference = first_difference(claimed, run.document)
    if difference is not None:
        raise ProfileMismatch(difference)
    return run
