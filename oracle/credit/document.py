"""Credit profile export: the JSON a lender keeps, and its re-derivation against any node.

The document carries the chain id, genesis hash, contract addresses, block range and the hash of the last block
scanned, the definitions of its figures, the figures (``iotsettle.oracle.credit.derive``) and compact evidence: the
logs (``iotsettle.oracle.credit.scan``) each figure rests on. :func:`build` makes one; :func:`verify_document`
re-makes a file's from the chain and names the first difference.

The figures and their exact definitions are in docs/CREDIT.md; :data:`DEFINITIONS` is the short form written into
every export.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from iotsettle.oracle.credit.derive import ChainLog, ChainPoint, Profile, derive
from iotsettle.oracle.credit.scan import (
    CONTRACTS,
    ContractRef,
    ProfileMismatch,
    ProgressFn,
    ScanStats,
    chain_point,
    check_unchanged,
    contract_refs,
    scan,
)
from iotsettle.oracle.ops.context import OpsContext

log = logging.getLogger(__name__)

#: Bumped whenever a figure's definition or the file layout changes; verify refuses other versions.
PROFILE_VERSION = 2

DEFINITIONS: dict[str, str] = {
    "amounts": "Money figures are maps token address → base units (decimal strings); tokens are never added up. "
    "address(0) is ETH.",
    "devices": "Devices whose DeviceRegistered event names the subject as owner (a claim of the subject: anyone can "
    "register keys it controls). keyRotations = KeyRotated events, revokedAt = time of DeviceRevoked.",
    "devices.uptime": "Share of UTC buckets (days; hours for devices younger than 7 days at the end of the range or "
    "at revocation) from the registration bucket to the end bucket inclusive that hold at least "
    "one settled event naming the device: a ReadingsSettled record / PremiumCharged (device = top 160 bits "
    "of the agreement / policy id), DeliveryConfirmed (device of the escrow's EscrowCreated), "
    "ObservationRecorded (station = device). bps = active × 10000 ÷ buckets, rounded down. The "
    "evidence of `active` is the first settled event of each active bucket.",
    "devices.settled": "events = settled events naming the device; billed = ReadingsSettled record amounts "
    "(meters: the record carries money, not register units); deliveries / released = DeliveryConfirmed count "
    "and toSeller; metres = PremiumCharged metres; rainfall = last − first ObservationRecorded "
    "rainfall register in the range (0.01 mm).",
    "consumer": "MeteredBilling agreements whose AgreementOffered names the subject as consumer. deposited = "
    "AgreementAccepted deposit + ToppedUp amounts (whoever paid); billed = ReadingsSettled record amounts (taken "
    "from the prepaid balance); arrearsIncurred = AgreementSuspended arrears; arrearsPaid = ToppedUp "
    "arrearsPaid.",
    "consumer.paidOnTime": "A settled reading is paid on time when the prepaid balance covered its whole cost when "
    "it was settled on chain, i.e. it is not the agreement's last ReadingsSettled record of a "
    "transaction that also suspended the agreement (AgreementSuspended). A reading that ran the balance "
    "dry is not paid on time, even if the arrears were paid later. paidOnTimeBps = "
    "readingsPaidOnTime × 10000 ÷ readings (null without readings).",
    "consumer.suspensions": "suspensions = AgreementSuspended events (fell into arrears); resumptions = "
    "AgreementResumed; suspendedSeconds = time between each suspension and its resumption "
    "(block times), an unresolved one counted to the end of the range; suspendedNow = "
    "agreements still suspended at the end block.",
    "consumer.monthly": "Per UTC month (YYYY-MM) of the block time: readings, billed, readingsPaidOnTime, "
    "suspensions and arrearsIncurred, as the section's figures of the same name restricted to that month.",
    "consumer.spans": "One entry per suspension, in chain order: id (the agreement), from (block time of "
    "AgreementSuspended), until (block time of the AgreementResumed that ended it; null if still suspended "
    "at the end block), arrears and token (of the AgreementSuspended).",
    "seller": "DeliveryEscrow escrows whose EscrowCreated names as seller the subject or the payout account of one "
    "of its accepted loans (LoanAccepted.account). delivered = DeliveryConfirmed "
    "(the contract only accepts a delivery signed no later than the deadline); refunded = EscrowRefunded "
    "(not delivered by the deadline); overdue = neither released, refunded nor cancelled and the deadline "
    "passed before the end block; onTimeBps = delivered × 10000 ÷ (delivered + refunded + overdue). "
    "released / penalties = DeliveryConfirmed toSeller / toBuyer.",
    "motor": "MotorInsurance policies whose PolicyOffered names the subject as holder. premiums = PremiumCharged "
    "amounts; reportsPaidOnTime = PremiumCharged not followed in the same transaction by PolicyLapsed for "
    "the same policy; lapses = PolicyLapsed; lapsedSeconds as consumer.suspendedSeconds.",
    "motor.monthly": "As consumer.monthly: reports, premiums, reportsPaidOnTime, lapses and arrearsIncurred per "
    "UTC month.",
    "motor.spans": "As consumer.spans, one entry per lapse (PolicyLapsed until PolicyReinstated).",
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

#: Containers present in every export even when empty (a stable shape for readers).
_SECTIONS = (
    "devices.items",
    "devices.byKind",
    "consumer.items",
    "consumer.monthly",
    "consumer.spans",
    "seller.items",
    "motor.items",
    "motor.monthly",
    "motor.spans",
    "crop.items",
    "loans.items",
    "consumer.deposited",
    "consumer.billed",
    "consumer.arrearsIncurred",
    "consumer.arrearsPaid",
    "seller.funded",
    "seller.released",
    "seller.penalties",
    "motor.deposited",
    "motor.premiums",
    "motor.arrearsIncurred",
    "crop.cover",
    "crop.premiumsPaid",
    "crop.payoutsReceived",
    "crop.payoutsToLoanAccounts",
    "crop.payoutsToOthers",
    "loans.principal",
    "loans.repaymentDue",
    "loans.repaid",
    "loans.outstanding",
)


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


def document(
    profile: Profile, point: ChainPoint, contracts: Mapping[str, ContractRef], logs: Sequence[ChainLog]
) -> dict[str, Any]:
    """The exportable profile: header, definitions, figures and compact evidence."""
    by_key = {e.key: e for e in logs}
    used = sorted({key for keys in profile.evidence.values() for key in keys})
    index = {key: i for i, key in enumerate(used)}
    values = {path: str(v) if path in profile.money else v for path, v in profile.values.items()}
    return {
        "profileVersion": PROFILE_VERSION,
        "subject": profile.subject,
        "chain": {"chainId": point.chain_id, "genesisHash": point.genesis_hash},
        "range": {
            "fromBlock": min((c.from_block for c in contracts.values()), default=0),
            "toBlock": point.to_block,
            "toBlockHash": point.to_block_hash,
            "toBlockTime": point.to_block_time,
        },
        "contracts": {name: ref.as_dict() for name, ref in sorted(contracts.items())},
        "definitions": DEFINITIONS,
        "figures": _nest(values),
        "evidence": {
            # [tx hash, log index, block] and, for a record of a ReadingsSettled batch log, its index in the log
            "logs": [[by_key[key].tx_hash, key[1], key[0], *key[2:]] for key in used],
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
            return (
                f"{section}: the file says {json.dumps(claimed.get(section), sort_keys=True)}, "
                f"the chain gives {json.dumps(derived.get(section), sort_keys=True)}"
            )
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


@dataclass(frozen=True)
class ProfileRun:
    document: dict[str, Any]
    stats: ScanStats
    seconds: float


def build(
    w3: Any,
    subject: str,
    point: ChainPoint,
    contracts: Mapping[str, ContractRef],
    abis: Mapping[str, Sequence[Mapping[str, Any]]],
    progress: ProgressFn = lambda _m: None,
) -> ProfileRun:
    """Scan, derive and assemble the exportable document."""
    started = time.perf_counter()
    logs, times, stats = scan(w3, subject, contracts, abis, point.to_block, progress)
    check_unchanged(w3, point)
    profile = derive(subject, logs, times, point)
    doc = document(profile, point, contracts, logs)
    seconds = time.perf_counter() - started
    log.info("credit profile of %s: %d logs, %d RPC calls, %.2f s", subject, stats.logs, stats.rpc_calls, seconds)
    return ProfileRun(doc, stats, seconds)


def build_from_deployment(
    ctx: OpsContext, subject: str, to_block: int | None, progress: ProgressFn = lambda _m: None
) -> ProfileRun:
    """The profile of ``subject`` over the contracts of ``ctx``'s deployment manifest (those deployed), up to
    ``to_block`` (None: the latest block)."""
    point = chain_point(ctx.w3, to_block)
    deployments = {
        name: (ctx.address(name), ctx.deployed_block(name), str(ctx.manifest["contracts"][name].get("txHash", "")))
        for name in CONTRACTS
        if ctx.has(name)
    }
    refs = contract_refs(ctx.w3, deployments, point.to_block)
    return build(ctx.w3, subject, point, refs, {name: ctx.abis[name] for name in refs}, progress)


def verify_document(
    w3: Any,
    claimed: Mapping[str, Any],
    abis: Mapping[str, Sequence[Mapping[str, Any]]],
    progress: ProgressFn = lambda _m: None,
) -> ProfileRun:
    """Re-derive ``claimed``'s profile from the chain behind ``w3``; raise ProfileMismatch naming the first
    difference. Only the file and the node are used: the addresses and block range come from the file."""
    try:
        version = claimed["profileVersion"]
        subject = claimed["subject"]
        chain, rng, contracts = claimed["chain"], claimed["range"], claimed["contracts"]
        to_block = int(rng["toBlock"])
        deployments = {
            name: (str(c["address"]), int(c["fromBlock"]), str(c["deployTx"])) for name, c in contracts.items()
        }
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ProfileMismatch(
            "this file is not a credit profile (chain, range, contracts or subject missing)"
        ) from None
    if version != PROFILE_VERSION:
        raise ProfileMismatch(
            f"profile version {version!r} is not understood here (this version reads {PROFILE_VERSION})"
        )
    unknown = sorted(set(deployments) - set(CONTRACTS))
    if unknown:
        raise ProfileMismatch(f"contracts: {', '.join(unknown)} is not part of a credit profile")
    point = chain_point(w3, None)
    if point.chain_id != chain.get("chainId"):
        raise ProfileMismatch(
            f"chain: the file is for chain {chain.get('chainId')}, this node is chain {point.chain_id}"
        )
    if point.genesis_hash != chain.get("genesisHash"):
        raise ProfileMismatch(
            f"chain: this node's genesis block is {point.genesis_hash}, the file's is "
            f"{chain.get('genesisHash')} (another chain with the same id)"
        )
    if to_block > point.to_block:
        raise ProfileMismatch(f"range: block {to_block} is not on this node yet (latest {point.to_block})")
    point = chain_point(w3, to_block)
    if point.to_block_hash != rng.get("toBlockHash"):
        raise ProfileMismatch(
            f"range: block {to_block} is {point.to_block_hash} on this node, the file was made at "
            f"{rng.get('toBlockHash')} (a reorganised or different chain)"
        )
    refs = contract_refs(w3, deployments, to_block)
    missing = sorted(set(deployments) - set(refs))
    if missing:
        raise ProfileMismatch(f"contracts: {', '.join(missing)} did not exist at block {to_block}")
    run = build(w3, subject, point, refs, abis, progress)
    difference = first_difference(claimed, run.document)
    if difference is not None:
        raise ProfileMismatch(difference)
    return run
