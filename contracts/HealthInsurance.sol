// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {DeviceEventVerifier} from "./DeviceEventVerifier.sol";
import {IDeviceRegistry} from "./interfaces/IDeviceRegistry.sol";
import {IHealthInsurance} from "./interfaces/IHealthInsurance.sol";
import {Funds} from "./money/Funds.sol";
import {PullPayments} from "./money/PullPayments.sol";

/// @title HealthInsurance: health cover priced per period by a wearable's signed activity tier.
/// @notice Pricing in {IHealthInsurance}. Only the tier goes on chain: the wearable reduces a period's steps and
/// active minutes to 0–3 against the thresholds of the policy before it signs.
///
/// Why the premium cannot depend on the relayer: nothing is charged by a transaction. The premium is derived, at
/// any time, from the clock and four counters: `baseRate × duePeriods − Σ_t tierCount[t] × discount(t)`, where a
/// period is due once it is over (so a period with no summary costs the base rate without anyone acting) and
/// `tierCount[t]` counts the periods whose best settled summary has tier t. A summary only ever raises its period's
/// tier (a lower or equal one is Replayed), so the final tiers are the maximum over every signed summary whatever
/// the order, and withholding one only delays its discount. After {close}, a late summary's discount is credited to
/// the holder through {PullPayments}. The insurer can only withdraw the part of the premium that no summary can take
/// back (every due period at the best tier's price), so the late credits are always backed.
///
/// Summary checks, cheapest first (the first failing one is the reason reported): unknown policy → UnknownTarget;
/// not Active or Closed → NotActive; tier above 3 → ValueOutOfRange; period ≥ periods → AfterEnd; the period's best
/// tier already at or above this one → Replayed; signed beyond now + MAX_CLOCK_SKEW or the period not over on chain
/// yet → TimestampInFuture; signed before the period ended → TimestampTooOld; then the signature: the current key of
/// the WEARABLE encoded in the policy id.
contract HealthInsurance is IHealthInsurance, DeviceEventVerifier, PullPayments {
    bytes32 public constant ACTIVITY_SUMMARY_TYPEHASH =
        keccak256("ActivitySummary(uint256 policyId,uint64 seq,uint64 timestamp,uint32 period,uint8 tier)");

    /// @notice Longest policy, in periods: its tier words (63 periods each) are written at acceptance.
    uint32 public constant MAX_PERIODS = 1_008;

    uint256 private constant _BPS = 10_000;
    uint256 private constant _WEARABLE_KIND = 1 << uint8(IDeviceRegistry.DeviceKind.Wearable);
    /// @dev Bytes per packed summary: policyId 32 | seq 8 | timestamp 8 | period 4 | tier 1 | r 32 | vs 32.
    uint256 private constant _PACKED_SUMMARY_SIZE = 117;
    /// @dev Periods per tier word: a nibble each (best tier + 1, 0 = no summary); the top nibble holds the sentinel
    /// bit that keeps the word non-zero, so a summary's write costs an update, not a fresh slot.
    uint256 private constant _PERIODS_PER_WORD = 63;
    uint256 private constant _SENTINEL = 1 << 255;

    /// @dev Per-policy storage. `settle` reads and writes slot 0 only (the tier counts, the status and the calendar
    /// share one word). Layout as Solidity packs it: slot 0: count0 0..31 | count1 32..63 | count2 64..95 | count3
    /// 96..127 | status 128..135 | start 136..175 | periodLength 176..207 | periods 208..239.
    struct Record {
        // slot 0
        uint32 count0;
        uint32 count1;
        uint32 count2;
        uint32 count3;
        PolicyStatus status;
        uint40 start;
        uint32 periodLength;
        uint32 periods;
        // slot 1
        uint128 baseRate;
        uint128 deposited;
        // slot 2
        uint16 discount0;
        uint16 discount1;
        uint16 discount2;
        uint16 discount3;
        uint32 minSteps1;
        uint32 minSteps2;
        uint32 minSteps3;
        uint16 minActive1;
        uint16 minActive2;
        uint16 minActive3;
        // slot 3
        address insurer;
        // slot 4
        address holder;
        // slot 5
        address token;
        // slot 6
        uint128 withdrawn;
        uint128 refunded;
    }

    mapping(uint256 policyId => Record) private _policies;
    mapping(uint256 policyId => mapping(uint256 index => uint256 word)) private _tierWords;
    uint96 private _policyCount;

    constructor(IDeviceRegistry registry_) DeviceEventVerifier(registry_) {}

    // ---------------------------------------------------------------- policy life cycle

    /// @inheritdoc IHealthInsurance
    function offer(address holder, address wearable, address token, Terms calldata terms)
        external
        returns (uint256 policyId)
    {
        if (holder == address(0) || token == address(0)) revert ZeroAddress();
        if (terms.baseRate == 0) revert ZeroRate();
        if (terms.periodLength == 0 || terms.periods == 0 || terms.periods > MAX_PERIODS) {
            revert InvalidPeriods(terms.periodLength, terms.periods);
        }
        uint16[4] calldata d = terms.discountBps;
        if (d[0] > d[1] || d[1] > d[2] || d[2] > d[3] || d[3] > _BPS) revert InvalidDiscounts(d);
        uint32[3] calldata s = terms.minSteps;
        uint16[3] calldata m = terms.minActiveMinutes;
        if (s[0] > s[1] || s[1] > s[2] || m[0] > m[1] || m[1] > m[2]) revert InvalidThresholds(s, m);
        _checkWearable(wearable);

        policyId = (uint256(uint160(wearable)) << 96) | ++_policyCount;
        Record storage p = _policies[policyId];
        p.status = PolicyStatus.Offered;
        p.periodLength = terms.periodLength;
        p.periods = terms.periods;
        p.baseRate = terms.baseRate;
        (p.discount0, p.discount1, p.discount2, p.discount3) = (d[0], d[1], d[2], d[3]);
        (p.minSteps1, p.minSteps2, p.minSteps3) = (s[0], s[1], s[2]);
        (p.minActive1, p.minActive2, p.minActive3) = (m[0], m[1], m[2]);
        p.insurer = msg.sender;
        p.holder = holder;
        p.token = token;
        emit PolicyOffered(policyId, msg.sender, holder, wearable, token, terms);
    }

    /// @inheritdoc IHealthInsurance
    function cancelOffer(uint256 policyId) external {
        Record storage p = _existing(policyId);
        if (msg.sender != p.insurer && msg.sender != p.holder) revert NotParty(policyId, msg.sender);
        if (p.status != PolicyStatus.Offered) revert WrongStatus(policyId, p.status);
        p.status = PolicyStatus.Cancelled;
        emit PolicyCancelled(policyId);
    }

    /// @inheritdoc IHealthInsurance
    function accept(uint256 policyId, uint256 deposit) external nonReentrant {
        Record storage p = _existing(policyId);
        if (msg.sender != p.holder) revert NotHolder(policyId, msg.sender);
        if (p.status != PolicyStatus.Offered) revert WrongStatus(policyId, p.status);
        if (deposit == 0) revert ZeroAmount();
        if (deposit > type(uint128).max) revert BalanceOverflow(deposit);

        p.status = PolicyStatus.Active;
        p.start = uint40(block.timestamp);
        p.deposited = uint128(deposit);
        // The holder pays once for the tier words, so no summary ever pays for a fresh slot.
        mapping(uint256 => uint256) storage words = _tierWords[policyId];
        uint256 count = (uint256(p.periods) + _PERIODS_PER_WORD - 1) / _PERIODS_PER_WORD;
        for (uint256 i = 0; i < count; ++i) {
            words[i] = _SENTINEL;
        }
        emit PolicyAccepted(policyId, deposit, uint64(block.timestamp));
        // The contract must hold exactly what it records: fee-on-transfer and lying tokens are refused.
        Funds.pullToken(p.token, deposit);
    }

    /// @inheritdoc IHealthInsurance
    function topUp(uint256 policyId, uint256 amount) external nonReentrant {
        Record storage p = _existing(policyId);
        if (p.status != PolicyStatus.Active) revert WrongStatus(policyId, p.status);
        if (amount == 0) revert ZeroAmount();
        uint256 newDeposited = uint256(p.deposited) + amount;
        if (newDeposited > type(uint128).max) revert BalanceOverflow(newDeposited);
        p.deposited = uint128(newDeposited);
        emit PolicyToppedUp(policyId, msg.sender, amount);
        Funds.pullToken(p.token, amount);
    }

    /// @inheritdoc IHealthInsurance
    function close(uint256 policyId) external nonReentrant returns (uint256 refund) {
        Record storage p = _existing(policyId);
        if (p.status != PolicyStatus.Active) revert WrongStatus(policyId, p.status);
        uint256 end = uint256(p.start) + uint256(p.periodLength) * p.periods;
        if (block.timestamp < end) revert TooEarly(policyId, end, block.timestamp);

        // Every period is due now: the premium only falls from here on (late summaries).
        uint256 premium = _premiumOf(p, p.periods);
        uint256 deposited = p.deposited;
        refund = deposited > premium ? deposited - premium : 0;
        // refund <= deposited, which fits uint128.
        p.refunded = uint128(refund);
        p.status = PolicyStatus.Closed;
        emit PolicyClosed(policyId, refund);
        // What {_pay} does, spelled out: Slither's taint tracking follows the whole policy record (which holds the
        // acceptance time) into the refund and reads _pay's zero check as a timestamp equality, though the refund
        // counts every period, not the clock.
        if (refund != 0 && !Funds.tryPush(p.token, p.holder, refund)) _credit(p.token, p.holder, refund);
    }

    /// @inheritdoc IHealthInsurance
    function withdrawEarnings(uint256 policyId) external nonReentrant returns (uint256 amount) {
        Record storage p = _existing(policyId);
        if (msg.sender != p.insurer) revert NotInsurer(policyId, msg.sender);
        amount = _earnings(p);
        // The earnings grow with the clock (periods over), and 0 is exactly "nothing yet": no balance is compared.
        // slither-disable-next-line incorrect-equality
        if (amount == 0) revert NoEarnings(policyId);
        // withdrawn + amount <= deposited, which fits uint128.
        p.withdrawn += uint128(amount);
        emit EarningsWithdrawn(policyId, msg.sender, amount);
        _guardPayout(p.token, amount); // the account's device guard, as for a credit
        Funds.push(p.token, msg.sender, amount);
    }

    // ---------------------------------------------------------------- settlement

    /// @inheritdoc IHealthInsurance
    function settle(bytes calldata summaries) external returns (uint256 settled) {
        uint256 len = summaries.length;
        if (len % _PACKED_SUMMARY_SIZE != 0) revert MalformedBatch(len);
        for (uint256 at = 0; at < len; at += _PACKED_SUMMARY_SIZE) {
            uint256 id;
            uint256 fields;
            bytes32 r;
            bytes32 vs;
            // fields = seq 192..255 | timestamp 128..191 | period 96..127 | tier 88..95 | (the start of r below).
            assembly ("memory-safe") {
                let item := add(summaries.offset, at)
                id := calldataload(item)
                fields := calldataload(add(item, 0x20))
                r := calldataload(add(item, 0x35))
                vs := calldataload(add(item, 0x55))
            }
            RejectReason reason = _settle(id, fields, r, vs);
            if (reason == RejectReason.None) {
                // Bounded by the batch length.
                unchecked {
                    ++settled;
                }
            } else {
                emit SummaryRejected(id, uint64(fields >> 192), reason);
            }
        }
    }

    /// @dev The checks in the order documented on the contract, then the tier word and the policy word written once
    /// each. Returns None after settling, or the reason nothing changed.
    function _settle(uint256 id, uint256 fields, bytes32 r, bytes32 vs) private returns (RejectReason reason) {
        Record storage p = _policies[id];
        uint256 word;
        assembly ("memory-safe") {
            word := sload(p.slot)
        }
        uint256 status = uint8(word >> 128);
        if (status == uint256(PolicyStatus.None)) return RejectReason.UnknownTarget;
        if (status != uint256(PolicyStatus.Active) && status != uint256(PolicyStatus.Closed)) {
            return RejectReason.NotActive;
        }
        reason = _checkSummary(id, word, fields);
        if (reason != RejectReason.None) return reason;
        reason = _checkSigner(
            _structHash(id, fields), r, vs, address(uint160(id >> 96)), _WEARABLE_KIND, uint64(fields >> 128)
        );
        if (reason != RejectReason.None) return reason;
        _apply(id, p, word, fields);
        if (status == uint256(PolicyStatus.Closed)) _creditLateDiscount(id, p);
    }

    /// @dev The tier, the period, the period's best tier so far (one cold read of its tier word), the time.
    function _checkSummary(uint256 id, uint256 word, uint256 fields) private view returns (RejectReason) {
        uint256 tier = uint8(fields >> 88);
        if (tier > 3) return RejectReason.ValueOutOfRange;
        uint256 period = uint32(fields >> 96);
        if (period >= uint32(word >> 208)) return RejectReason.AfterEnd;
        (uint256 tiers, uint256 shift) = _tierWord(id, period);
        if ((tiers >> shift) & 0xf > tier) return RejectReason.Replayed;
        return _checkTime(word, period, uint64(fields >> 128));
    }

    /// @dev Write the period's best tier and move the policy's count from the previous tier to this one: one SSTORE
    /// each. The checks passed (the tier word is warm now).
    function _apply(uint256 id, Record storage p, uint256 word, uint256 fields) private {
        uint256 tier = uint8(fields >> 88);
        uint256 period = uint32(fields >> 96);
        (uint256 tiers, uint256 shift) = _tierWord(id, period);
        uint256 previous = (tiers >> shift) & 0xf; // best tier + 1, 0 = none
        // Counts are below 2^32 (each counts distinct periods of one policy, at most MAX_PERIODS); the period is
        // below MAX_PERIODS.
        unchecked {
            _tierWords[id][period / _PERIODS_PER_WORD] = (tiers & ~(uint256(0xf) << shift)) | ((tier + 1) << shift);
            if (previous != 0) word -= 1 << ((previous - 1) * 32);
            word += 1 << (tier * 32);
        }
        assembly ("memory-safe") {
            sstore(p.slot, word)
        }
        // previous - 1 wraps to 255 for a period that had no summary, as {SummarySettled} documents.
        unchecked {
            emit SummarySettled(id, uint64(fields >> 192), uint32(period), uint8(tier), uint8(previous - 1));
        }
    }

    /// @dev The tier word holding `period` and the period's nibble offset in it.
    function _tierWord(uint256 id, uint256 period) private view returns (uint256 tiers, uint256 shift) {
        // period < MAX_PERIODS: no overflow.
        unchecked {
            tiers = _tierWords[id][period / _PERIODS_PER_WORD];
            shift = (period % _PERIODS_PER_WORD) * 4;
        }
    }

    /// @dev A summary is signed after its period ended, and settles once the period is over on chain too (so every
    /// discount given is of a due period).
    function _checkTime(uint256 word, uint256 period, uint64 timestamp) private view returns (RejectReason) {
        uint256 periodEnd;
        // start < 2^40, period < MAX_PERIODS, periodLength < 2^32: far below 2^256.
        unchecked {
            periodEnd = uint40(word >> 136) + (period + 1) * uint32(word >> 176);
        }
        if (timestamp > block.timestamp + MAX_CLOCK_SKEW || periodEnd > block.timestamp) {
            return RejectReason.TimestampInFuture;
        }
        if (timestamp < periodEnd) return RejectReason.TimestampTooOld;
        return RejectReason.None;
    }

    /// @dev A summary settled on a closed policy lowered its premium: the holder gets back what the deposit now
    /// covers beyond it and was not refunded yet, as a credit (no push inside a batch).
    function _creditLateDiscount(uint256 id, Record storage p) private {
        // A closed policy was closed after its end: every period is due.
        uint256 premium = _premiumOf(p, p.periods);
        uint256 deposited = p.deposited;
        uint256 returnable = deposited > premium ? deposited - premium : 0;
        uint256 refunded = p.refunded;
        if (returnable <= refunded) return;
        // returnable <= deposited, which fits uint128.
        p.refunded = uint128(returnable);
        emit LateDiscountCredited(id, returnable - refunded);
        _credit(p.token, p.holder, returnable - refunded);
    }

    /// @dev `keccak256(abi.encode(ACTIVITY_SUMMARY_TYPEHASH, id, seq, timestamp, period, tier))` of the packed
    /// `fields` (layout at {settle}), in free memory without allocating it.
    function _structHash(uint256 id, uint256 fields) private pure returns (bytes32 structHash) {
        bytes32 typehash = ACTIVITY_SUMMARY_TYPEHASH;
        assembly ("memory-safe") {
            let fmp := mload(0x40)
            mstore(fmp, typehash)
            mstore(add(fmp, 0x20), id)
            mstore(add(fmp, 0x40), shr(192, fields))
            mstore(add(fmp, 0x60), and(shr(128, fields), 0xffffffffffffffff))
            mstore(add(fmp, 0x80), and(shr(96, fields), 0xffffffff))
            mstore(add(fmp, 0xa0), and(shr(88, fields), 0xff))
            structHash := keccak256(fmp, 0xc0)
        }
    }

    // ---------------------------------------------------------------- money (derived)

    /// @dev Periods over now (all of them once the policy is closed: close opens at the end); none before accept.
    function _duePeriods(Record storage p) private view returns (uint256) {
        PolicyStatus status = p.status;
        if (status != PolicyStatus.Active && status != PolicyStatus.Closed) return 0;
        uint256 elapsed = block.timestamp - p.start;
        uint256 due = elapsed / p.periodLength;
        return due < p.periods ? due : p.periods;
    }

    /// @dev The base rate's discount at each tier.
    function _discounts(Record storage p) private view returns (uint256[4] memory d) {
        uint256 rate = p.baseRate;
        d[0] = rate * p.discount0 / _BPS;
        d[1] = rate * p.discount1 / _BPS;
        d[2] = rate * p.discount2 / _BPS;
        d[3] = rate * p.discount3 / _BPS;
    }

    /// @dev Σ over due periods of (baseRate − discount of its best summary). Settled summaries are of due periods
    /// only, and a discount is at most the base rate, so this does not underflow.
    function _premium(Record storage p) private view returns (uint256) {
        return _premiumOf(p, _duePeriods(p));
    }

    /// @dev {_premium} with `due` periods over.
    function _premiumOf(Record storage p, uint256 due) private view returns (uint256) {
        uint256[4] memory d = _discounts(p);
        uint256 given = p.count0 * d[0] + p.count1 * d[1] + p.count2 * d[2] + p.count3 * d[3];
        return p.baseRate * due - given;
    }

    /// @dev What the insurer can withdraw now: min(deposited, every due period at the best tier's price), less what
    /// it withdrew. No summary can bring the premium below that floor, so whatever a late summary gives back is
    /// still in the contract.
    function _earnings(Record storage p) private view returns (uint256) {
        uint256 floor = (p.baseRate - _discounts(p)[3]) * _duePeriods(p);
        uint256 deposited = p.deposited;
        uint256 earned = floor < deposited ? floor : deposited;
        uint256 withdrawn = p.withdrawn;
        return earned > withdrawn ? earned - withdrawn : 0;
    }

    // ---------------------------------------------------------------- views

    /// @inheritdoc IHealthInsurance
    function policyOf(uint256 policyId) external view returns (Policy memory policy) {
        Record storage p = _policies[policyId];
        policy.insurer = p.insurer;
        policy.holder = p.holder;
        policy.wearable = p.status == PolicyStatus.None ? address(0) : address(uint160(policyId >> 96));
        policy.token = p.token;
        policy.status = p.status;
        policy.start = p.start;
        policy.terms = _terms(p);
        policy.tierCounts = [p.count0, p.count1, p.count2, p.count3];
        policy.duePeriods = uint32(_duePeriods(p));
        uint256 premium = _premium(p);
        uint256 deposited = p.deposited;
        policy.premium = premium;
        policy.deposited = deposited;
        policy.prepaid = p.status == PolicyStatus.Active && deposited > premium ? deposited - premium : 0;
        policy.arrears = premium > deposited ? premium - deposited : 0;
        policy.refunded = p.refunded;
        policy.withdrawn = p.withdrawn;
        policy.earnings = _earnings(p);
    }

    /// @inheritdoc IHealthInsurance
    function tierOf(uint256 policyId, uint32 period) external view returns (bool summarised, uint8 tier) {
        uint256 nibble = (_tierWords[policyId][period / _PERIODS_PER_WORD] >> ((period % _PERIODS_PER_WORD) * 4)) & 0xf;
        if (nibble == 0) return (false, 0);
        return (true, uint8(nibble - 1));
    }

    /// @inheritdoc IHealthInsurance
    function hashActivitySummary(uint256 policyId, uint64 seq, uint64 timestamp, uint32 period, uint8 tier)
        external
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(
            keccak256(abi.encode(ACTIVITY_SUMMARY_TYPEHASH, policyId, seq, timestamp, period, tier))
        );
    }

    // ---------------------------------------------------------------- internals

    function _terms(Record storage p) private view returns (Terms memory t) {
        t.baseRate = p.baseRate;
        t.periodLength = p.periodLength;
        t.periods = p.periods;
        t.discountBps = [p.discount0, p.discount1, p.discount2, p.discount3];
        t.minSteps = [p.minSteps1, p.minSteps2, p.minSteps3];
        t.minActiveMinutes = [p.minActive1, p.minActive2, p.minActive3];
    }

    function _existing(uint256 policyId) private view returns (Record storage p) {
        p = _policies[policyId];
        if (p.status == PolicyStatus.None) revert UnknownPolicy(policyId);
    }

    function _checkWearable(address wearable) private view {
        IDeviceRegistry.Device memory d = _REGISTRY.deviceOf(wearable);
        if (d.status != IDeviceRegistry.DeviceStatus.Active) revert UnknownDevice(wearable);
        if (d.kind != IDeviceRegistry.DeviceKind.Wearable) revert WrongDeviceKind(wearable);
    }
}
