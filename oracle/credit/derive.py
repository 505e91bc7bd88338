"""Credit profile derivation: an owner's figures as a pure function of decoded chain logs, each with its evidence.

No node is needed here: :func:`derive` takes the logs (any superset of what concerns the subject, in any order),
the times of the blocks the figures need (:data:`TIMED_EVENTS`) and the end block, so the rules can be tested and
re-run without a chain. :func:`follow_ups` says which ids concern the subject, for the scan
(``iotsettle.oracle.credit.scan``) to fetch their events; the export is ``iotsettle.oracle.credit.document``.

The figures and their exact definitions are in docs/CREDIT.md.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from eth_utils import to_checksum_address
from iotsettle.oracle.protocol import settled
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.errors import ChainError

#: A device younger than this at the end of the range has its uptime counted in hours instead of days.
YOUNG_DEVICE_SECONDS = 7 * 86_400
HOUR = 3_600
DAY = 86_400
BPS = 10_000

#: Events whose block time some figure needs (uptime, suspension lengths, repayment dates).
TIMED_EVENTS = frozenset(
    {
        "DeviceRegistered",
        "DeviceRevoked",
        settled.EVENT,
        "DeliveryConfirmed",
        "PremiumCharged",
        "ObservationRecorded",
        "AgreementSuspended",
        "AgreementResumed",
        "PolicyLapsed",
        "PolicyReinstated",
        "LoanRepaid",
    }
)


# ------------------------------------------------------------------------------------------------ types


@dataclass(frozen=True)
class ChainLog:
    """One decoded log, or one record of a ``ReadingsSettled`` batch log (``record`` = its index in the log);
    ``key`` (block, logIndex), or (block, logIndex, record) for a record, orders and identifies it within a chain."""

    block: int
    log_index: int
    tx_hash: str
    contract: str
    event: str
    args: Mapping[str, Any] = field(compare=False, hash=False)
    record: int | None = None

    @property
    def key(self) -> tuple[int, ...]:
        if self.record is None:
            return (self.block, self.log_index)
        return (self.block, self.log_index, self.record)


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
    evidence: Mapping[str, frozenset[tuple[int, ...]]]
    money: frozenset[str]


# ------------------------------------------------------------------------------------------------ derivation


class _Figures:
    """Accumulates figures by dotted path, with their evidence."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.evidence: dict[str, set[tuple[int, ...]]] = defaultdict(set)
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
def checksum(address: str) -> str:
    """EIP-55 form, cached: each call hashes, and a big profile names the same few addresses thousands of times."""
    return to_checksum_address(address)


def _device_of_id(target_id: int) -> str:
    """The device of an agreement / policy id: its top 160 bits."""
    return checksum(f"0x{target_id >> 96:040x}")


def _hex_id(value: int) -> str:
    return hex(int(value))


def month_of(timestamp: int) -> str:
    """The UTC calendar month (``YYYY-MM``) of a block time: the key of the monthly figures."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m")


def _kind_name(kind: int) -> str:
    """The name of a registered device kind; the number itself for a kind this version does not know."""
    try:
        return DeviceKind(kind).name
    except ValueError:
        return str(kind)


@dataclass(frozen=True)
class _Prepaid:
    """A prepaid product as its contract's events tell it. An offer names who pays for a device's reports; the payer
    accepts with a deposit and tops the balance up; each settled report is charged from it, and a charge the balance
    cannot cover suspends the agreement (lapses the policy) until a top-up resumes it.

    MeteredBilling (the consumer section) and MotorInsurance (the motor section) live this way under their own
    event and figure names; one derivation (:func:`_prepaid`) and one scan plan (:func:`follow_ups`) serve both.
    """

    section: str
    contract: str
    id_field: str
    payer: str  # the offer's field naming who pays: the subject's agreements / policies
    device: str  # the offer's field naming the device whose reports are charged
    offered: str
    accepted: str
    topped_up: str
    charged: str
    suspended: str
    resumed: str
    closed: str
    cancelled: str
    parties: tuple[str, ...]  # offer fields copied into each item
    count: str  # figure: offers naming the subject
    charges: str  # figure: charges settled
    charged_money: str  # figure: their amounts
    paid_on_time: str  # figure: charges the balance covered
    suspensions: str
    resumptions: str
    spans: tuple[str, str, str]  # figures: seconds suspended, the longest suspension, still suspended at the end
    volumes: tuple[str, ...] = ()  # charge fields summed into figures of the same name
    per_item: frozenset[str] = frozenset()  # figures also kept per agreement / policy
    arrears_paid: bool = False  # top-ups' arrearsPaid summed into the figure ``arrearsPaid``

    @property
    def events(self) -> tuple[str, ...]:
        """The events that follow an offer, fetched by its id."""
        return (self.accepted, self.topped_up, self.charged, self.suspended, self.resumed, self.closed, self.cancelled)


_CONSUMER = _Prepaid(
    section="consumer",
    contract="MeteredBilling",
    id_field="agreementId",
    payer="consumer",
    device="device",
    offered="AgreementOffered",
    accepted="AgreementAccepted",
    topped_up="ToppedUp",
    charged=settled.EVENT,
    suspended="AgreementSuspended",
    resumed="AgreementResumed",
    closed="AgreementClosed",
    cancelled="OfferCancelled",
    parties=("provider", "device", "token"),
    count="agreements",
    charges="readings",
    charged_money="billed",
    paid_on_time="readingsPaidOnTime",
    suspensions="suspensions",
    resumptions="resumptions",
    spans=("suspendedSeconds", "longestSuspensionSeconds", "suspendedNow"),
    per_item=frozenset({"readings", "billed", "readingsPaidOnTime", "suspensions", "deposited"}),
    arrears_paid=True,
)
_MOTOR = _Prepaid(
    section="motor",
    contract="MotorInsurance",
    id_field="policyId",
    payer="holder",
    device="vehicle",
    offered="PolicyOffered",
    accepted="PolicyAccepted",
    topped_up="PolicyToppedUp",
    charged="PremiumCharged",
    suspended="PolicyLapsed",
    resumed="PolicyReinstated",
    closed="PolicyClosed",
    cancelled="PolicyCancelled",
    parties=("insurer", "vehicle", "token"),
    count="policies",
    charges="reports",
    charged_money="premiums",
    paid_on_time="reportsPaidOnTime",
    suspensions="lapses",
    resumptions="reinstatements",
    spans=("lapsedSeconds", "longestLapseSeconds", "lapsedNow"),
    volumes=("metres", "harshBraking", "speeding"),
    per_item=frozenset({"reports", "metres", "premiums", "lapses"}),
)
_PREPAID = (_CONSUMER, _MOTOR)


def payees_of(subject: str, logs: Sequence[ChainLog]) -> set[str]:
    """The subject and the payout accounts of its accepted loans: payments to those are the subject's income
    (a borrower names its loan's account as seller of escrows and beneficiary of crop cover)."""
    loans = {int(e.args["loanId"]) for e in logs if e.event == "LoanOffered" and e.args["borrower"] == subject}
    return {subject} | {e.args["account"] for e in logs if e.event == "LoanAccepted" and int(e.args["loanId"]) in loans}


def follow_ups(subject: str, logs: Sequence[ChainLog]) -> dict[str, dict[str, tuple[tuple[str, ...], list[Any]]]]:
    """What to fetch after the creation events: per contract, per purpose, (event names, topic1 values).

    Pure, and used by the scan (``iotsettle.oracle.credit.scan.scan``) so the fetching and the derivation agree on
    which ids concern the subject. The answer grows with ``logs`` (a loan's LoanAccepted names its payout account,
    which may be the seller of escrows): the scan asks again until nothing new is named.
    """
    subject = to_checksum_address(subject)
    payees = payees_of(subject, logs)
    devices = sorted({e.args["device"] for e in logs if e.event == "DeviceRegistered" and e.args["owner"] == subject})
    device_set = set(devices)
    offered = {p.offered: p for p in _PREPAID}
    offers: dict[str, set[int]] = {p.contract: set() for p in _PREPAID}
    escrows, covers, loans = set(), set(), set()
    cover_seasons: set[int] = set()
    season_pool = {int(e.args["seasonId"]): int(e.args["poolId"]) for e in logs if e.event == "SeasonCreated"}
    pool_token = {int(e.args["poolId"]): e.args["token"] for e in logs if e.event == "PoolCreated"}
    for e in logs:
        a = e.args
        product = offered.get(e.event)
        if product is not None:
            if a[product.payer] == subject or a[product.device] in device_set:
                offers[product.contract].add(int(a[product.id_field]))
        elif e.event == "EscrowCreated" and (a["seller"] in payees or a["device"] in device_set):
            escrows.add(int(a["escrowId"]))
        elif e.event == "CoverBought" and (a["buyer"] == subject or a["beneficiary"] in payees):
            covers.add(int(a["policyId"]))
            cover_seasons.add(int(a["seasonId"]))
        elif e.event == "LoanOffered" and a["borrower"] == subject:
            loans.add(int(a["loanId"]))
    consumer, motor = (sorted(offers[p.contract]) for p in (_CONSUMER, _MOTOR))
    return {
        "DeviceRegistry": {"identity": (("KeyRotated", "DeviceRevoked"), list(devices))},
        _CONSUMER.contract: {_CONSUMER.count: (_CONSUMER.events, consumer)},
        "DeliveryEscrow": {"escrows": (("DeliveryConfirmed", "EscrowRefunded", "EscrowCancelled"), sorted(escrows))},
        _MOTOR.contract: {_MOTOR.count: (_MOTOR.events, motor)},
        "CropInsurance": {
            "covers": (("PayoutSent",), sorted(covers)),
            "seasons": (("SeasonFinalized",), sorted(cover_seasons)),
            "credits": (
                ("Credited",),
                sorted({pool_token[season_pool[s]] for s in cover_seasons if season_pool.get(s) in pool_token}),
            ),
            "stations": (("ObservationRecorded",), list(devices)),
        },
        "LoanBook": {"loans": (("LoanAccepted", "Repaid", "LoanRepaid", "LoanCancelled"), sorted(loans))},
    }


class _Spans:
    """Suspensions (or lapses) per target: count the seconds from each start to its end, or to the end block, and
    list each one (``{prefix}.spans.N``: target id, from, until — null while it lasts) for a timeline."""

    def __init__(self, f: _Figures, prefix: str, seconds: str, longest: str, still: str) -> None:
        self._f = f
        self._prefix = prefix
        self._open: dict[int, tuple[int, ChainLog, str]] = {}
        self._listed = 0
        self._paths = (f"{prefix}.{seconds}", f"{prefix}.{longest}", f"{prefix}.{still}")
        f.zero(*self._paths)

    def begin(self, target: int, time: int, entry: ChainLog) -> str:
        """Open a span; its path in the list, for the caller to add what the starting event carries."""
        path = f"{self._prefix}.spans.{self._listed}"
        self._listed += 1
        self._f.set(f"{path}.id", _hex_id(target), entry)
        self._f.set(f"{path}.from", time, entry)
        self._f.set(f"{path}.until", None, entry)
        self._open[target] = (time, entry, path)
        return path

    def end(self, target: int, time: int, entry: ChainLog) -> None:
        started = self._open.pop(target, None)
        if started is not None:
            self._f.set(f"{started[2]}.until", time, started[1], entry)
            self._count(time - started[0], started[1], entry)

    def close(self, end_time: int) -> None:
        """Spans still open at the end block count up to its time."""
        for _target, (start, entry, _path) in sorted(self._open.items()):
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
    #: per prepaid product's contract: id → its offer (AgreementOffered / PolicyOffered)
    offers: dict[str, dict[int, ChainLog]] = field(default_factory=lambda: {p.contract: {} for p in _PREPAID})
    escrows: dict[int, ChainLog] = field(default_factory=dict)
    pool_token: dict[int, str] = field(default_factory=dict)
    season_pool: dict[int, int] = field(default_factory=dict)
    covers: dict[int, ChainLog] = field(default_factory=dict)
    loans: dict[int, ChainLog] = field(default_factory=dict)
    #: (tx, log index, target) of charges the prepaid balance could not cover (a suspension / lapse log follows).
    #: the charges that ran the balance dry, by (tx hash, log index, record or None, agreement / policy id)
    ran_dry: set[tuple[str, int, int | None, int]] = field(default_factory=set)

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
    offered = {p.offered: p for p in _PREPAID}
    suspended = {p.suspended: p for p in _PREPAID}
    dry_batches: set[tuple[str, int]] = set()
    for e in ordered:
        a = e.args
        if e.event in offered:
            product = offered[e.event]
            w.offers[product.contract][int(a[product.id_field])] = e
        elif e.event in suspended:
            product = suspended[e.event]
            if product.charged == settled.EVENT:
                # the batch log comes after the suspension: the agreement's last record in the transaction
                dry_batches.add((e.tx_hash, int(a[product.id_field])))
            else:  # a per-report log: the charge is the log just before the lapse
                w.ran_dry.add((e.tx_hash, e.log_index - 1, None, int(a[product.id_field])))
        match e.event:
            case "DeviceRegistered" if a["owner"] == subject:
                w.devices.setdefault(a["device"], e)
            case "EscrowCreated":
                w.escrows[int(a["escrowId"])] = e
            case "PoolCreated":
                w.pool_token[int(a["poolId"])] = a["token"]
            case "SeasonCreated":
                w.season_pool[int(a["seasonId"])] = int(a["poolId"])
            case "CoverBought" if a["buyer"] == subject or a["beneficiary"] in w.payees:
                w.covers[int(a["policyId"])] = e
            case "LoanOffered" if a["borrower"] == subject:
                w.loans[int(a["loanId"])] = e
    last_record: dict[tuple[str, int], ChainLog] = {}
    for e in ordered:
        if e.event == settled.EVENT and (e.tx_hash, int(e.args["agreementId"])) in dry_batches:
            last_record[(e.tx_hash, int(e.args["agreementId"]))] = e
    for (tx_hash, target), e in last_record.items():
        w.ran_dry.add((tx_hash, e.log_index, e.record, target))
    return w


def derive(subject: str, logs: Sequence[ChainLog], times: Mapping[int, int], end: ChainPoint) -> Profile:
    """The figures of ``subject`` from decoded logs (any superset of what concerns it, in any order).

    ``times`` maps block number → block timestamp for at least the blocks of :data:`TIMED_EVENTS` logs.
    """
    w = _world(to_checksum_address(subject), sorted(logs, key=lambda e: e.key), times, end.to_block_time)
    f = _Figures()
    _devices(f, w)
    _prepaid(f, w, _CONSUMER)
    _seller(f, w)
    _prepaid(f, w, _MOTOR)
    _crop(f, w)
    _loans(f, w)
    evidence = {path: frozenset(keys) for path, keys in f.evidence.items() if path in f.values and keys}
    return Profile(w.subject, dict(f.values), evidence, frozenset(f.money))


def _settled_device(f: _Figures, w: _World, e: ChainLog) -> str | None:
    """The owned device a settled event names, after adding its volume; None for other events and devices."""
    a = e.args
    match e.event:
        case settled.EVENT:
            device = _device_of_id(int(a["agreementId"]))
            offer = w.offers[_CONSUMER.contract].get(int(a["agreementId"]))
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
        kind = _kind_name(int(reg.args["kind"]))
        base = f"devices.items.{device}"
        f.add("devices.count", 1, reg)
        f.add(f"devices.byKind.{kind}", 1, reg)
        f.set(f"{base}.kind", kind, reg)
        f.set(f"{base}.registeredBlock", reg.block, reg)
        f.set(f"{base}.registeredAt", w.time_of(reg), reg)
        f.zero(f"{base}.keyRotations", f"{base}.revokedAt", f"{base}.settled.events")
    settled_of: dict[str, list[ChainLog]] = defaultdict(list)
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
            settled_of[named].append(e)
            f.add(f"devices.items.{named}.settled.events", 1, e)
    for device, reg in w.devices.items():
        _uptime(f, w, f"devices.items.{device}.uptime", reg, revoked.get(device), settled_of.get(device, []))


def _uptime(
    f: _Figures, w: _World, base: str, reg: ChainLog, revoked: ChainLog | None, settled: list[ChainLog]
) -> None:
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


def _kept(p: _Prepaid, item: str, name: str) -> tuple[str, ...]:
    """Where figure ``name`` goes: the section, and the item too when the product keeps it per item."""
    return (f"{p.section}.{name}", f"{item}.{name}") if name in p.per_item else (f"{p.section}.{name}",)


def _prepaid(f: _Figures, w: _World, p: _Prepaid) -> None:
    """The section of a prepaid product (consumer: metered billing; motor: insurance) for the agreements or
    policies the subject pays."""
    s = p.section
    counters = (p.charges, p.paid_on_time, p.suspensions, *p.volumes)
    f.zero(*(f"{s}.{k}" for k in (p.count, "accepted", "cancelled", "closed", "topUps", p.resumptions, *counters)))
    spans = _Spans(f, s, *p.spans)
    offers = w.offers[p.contract]
    mine = {i for i, e in offers.items() if e.args[p.payer] == w.subject}
    for target, e in w.of(p.contract, p.id_field, mine):
        a = e.args
        token = offers[target].args["token"]
        item = f"{s}.items.{_hex_id(target)}"
        match e.event:
            case p.offered:
                f.add(f"{s}.{p.count}", 1, e)
                for key in p.parties:
                    f.set(f"{item}.{key}", a[key], e)
                f.zero(*(f"{item}.{k}" for k in counters if k in p.per_item))
            case p.accepted | p.topped_up:
                top_up = e.event == p.topped_up
                f.add(f"{s}.topUps" if top_up else f"{s}.accepted", 1, e)
                for path in _kept(p, item, "deposited"):
                    f.money_add(path, token, int(a["amount"] if top_up else a["deposit"]), e)
                if top_up and p.arrears_paid and int(a["arrearsPaid"]):
                    f.money_add(f"{s}.arrearsPaid", token, int(a["arrearsPaid"]), e)
            case p.charged:
                month = f"{s}.monthly.{month_of(w.time_of(e))}"
                f.zero(f"{month}.{p.paid_on_time}", f"{month}.{p.suspensions}")
                for path in (*_kept(p, item, p.charges), f"{month}.{p.charges}"):
                    f.add(path, 1, e)
                for volume in p.volumes:
                    for path in _kept(p, item, volume):
                        f.add(path, int(a[volume]), e)
                for path in (*_kept(p, item, p.charged_money), f"{month}.{p.charged_money}"):
                    f.money_add(path, token, int(a["amount"]), e)
                if (e.tx_hash, e.log_index, e.record, target) not in w.ran_dry:
                    for path in (*_kept(p, item, p.paid_on_time), f"{month}.{p.paid_on_time}"):
                        f.add(path, 1, e)
            case p.suspended:
                month = f"{s}.monthly.{month_of(w.time_of(e))}"
                f.zero(f"{month}.{p.charges}", f"{month}.{p.paid_on_time}")
                for path in (*_kept(p, item, p.suspensions), f"{month}.{p.suspensions}"):
                    f.add(path, 1, e)
                for path in (f"{s}.arrearsIncurred", f"{month}.arrearsIncurred"):
                    f.money_add(path, token, int(a["arrears"]), e)
                span = spans.begin(target, w.time_of(e), e)
                f.set(f"{span}.arrears", str(int(a["arrears"])), e)
                f.set(f"{span}.token", token, e)
            case p.resumed:
                f.add(f"{s}.{p.resumptions}", 1, e)
                spans.end(target, w.time_of(e), e)
            case p.closed:
                f.add(f"{s}.closed", 1, e)
            case p.cancelled:
                f.add(f"{s}.cancelled", 1, e)
    spans.close(w.end_time)
    f.ratio(f"{s}.paidOnTimeBps", f"{s}.{p.paid_on_time}", [f"{s}.{p.charges}"])


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


def _crop(f: _Figures, w: _World) -> None:
    k = "crop"
    f.zero(*(f"{k}.{x}" for x in ("covers", "payouts", "payoutsCredited", "expired", "pending")))
    settled: set[int] = set()
    # a payout whose push failed: the contract's Credited of the beneficiary right after its PayoutSent
    credited_at = {
        (e.tx_hash, e.log_index) for e in w.ordered if e.contract == "CropInsurance" and e.event == "Credited"
    }
    untriggered = {
        int(e.args["seasonId"]): e
        for e in w.ordered
        if e.contract == "CropInsurance" and e.event == "SeasonFinalized" and not e.args["triggered"]
    }
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
                to = (
                    "payoutsReceived"
                    if a["beneficiary"] == w.subject
                    else "payoutsToLoanAccounts"
                    if a["beneficiary"] in w.payees
                    else "payoutsToOthers"
                )
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
    f.zero(
        *(
            f"{b}.{x}"
            for x in ("offered", "taken", "cancelled", "fullyRepaid", "repaidByDueBy", "repaidLate", "overdue")
        )
    )
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
