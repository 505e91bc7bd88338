// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {DeviceEventVerifier} from "./DeviceEventVerifier.sol";
import {IDeviceRegistry} from "./interfaces/IDeviceRegistry.sol";
import {IMotorInsurance} from "./interfaces/IMotorInsurance.sol";
import {Funds} from "./money/Funds.sol";
import {PullPayments} from "./money/PullPayments.sol";

/// @title MotorInsurance: pay-per-km premiums from a vehicle's device-signed odometer, with a behaviour factor.
/// @notice An insurer offers a policy for one VEHICLE device; the holder accepts it, naming the starting registers
/// it agrees to, with a prepaid deposit. The premium is priced on the totals since the offer: F(M, E) of the metres
/// M and harsh-braking plus speeding events E counted from the offer's registers, at `ratePerKm` times a behaviour
/// factor between `minFactorBps` (clean driving) and `maxFactorBps`, `stepBps` higher per event per 100 km
/// (formula in {IMotorInsurance}). Each settled report charges how much floor(F) grew since the last settled report,
/// so the premium of a policy is the same whichever of its signed reports are relayed, in whatever batches: a
/// relayer that relays only the newest report (or every one) changes nothing, and rounding remainders carry over.
/// Every {PremiumCharged} event carries the period's metres and event counts and the factor of the totals (packed
/// in one record word), so the holder sees why the rate moved. When the prepaid balance runs short the rest becomes arrears and the policy
/// lapses until a top-up pays them.
///
/// Report checks, cheapest first (the first failing one is the reason reported): unknown policy → UnknownTarget;
/// seq ≤ last settled seq → Replayed (whatever the status is now, so racing relayers see Replayed); Lapsed →
/// Suspended; not Active → NotActive; any register below the last settled value → CounterRollback; timestamp
/// beyond now + MAX_CLOCK_SKEW or before the last settled report (or acceptance) → TimestampInFuture/TooOld;
/// timestamp after a requested closeAt → AfterEnd; then the signature: the current key of the VEHICLE encoded in
/// the policy id.
///
/// Ending: reports signed up to closeAt keep settling until {close}, which opens strictly after closeAt + grace, so
/// closing first or withholding reports during the notice only delays the premium of signed driving.
///
/// Terms: the relayer sends each report with its policy's terms ({telematicsTerms}: rate, factor bounds, starting
/// registers, closeAt), and the contract checks them against a 128-bit seal kept beside the money in, so a report
/// reads two policy slots instead of three. Terms that do not match the seal (false, unknown to the relayer, or
/// stale after a close request) are read from storage instead: a relayer cannot change an outcome, only pay more.
///
/// Money: nothing about it is written by a settled report. The premiums of a policy add up to floor(F) of its
/// last settled totals (the charges telescope), so the balances are derived from that "owed" figure and the money
/// that came in: prepaid = deposited − owed (0 when owed is more, or once closed), arrears = owed − deposited
/// (when positive), charged = deposited − prepaid − refunded. A report lapses the policy when owed passes
/// deposited. The refund is paid with a bounded push that becomes a pull credit ({PullPayments}) when it fails.
contract MotorInsurance is IMotorInsurance, DeviceEventVerifier, PullPayments {
    bytes32 public constant TELEMATICS_TYPEHASH = keccak256(
        "Telematics(uint256 policyId,uint64 seq,uint64 timestamp,uint64 odometer,uint32 harshBraking,uint32 speeding)"
    );

    /// @inheritdoc IMotorInsurance
    uint16 public constant MAX_FACTOR_BPS = 50_000;

    /// @dev `stepBps` applies per event per 100 km = 100_000 m.
    uint256 private constant _STEP_DISTANCE_METRES = 100_000;
    /// @dev F divides by metres per km (the rate is per km, the odometer counts metres) × factor 1.0 in bps.
    uint256 private constant _PRICE_DIVISOR = 1_000 * 10_000;

    uint256 private constant _VEHICLE_KIND = 1 << uint8(IDeviceRegistry.DeviceKind.Vehicle);

    /// @dev Per-policy storage. `settle` reads slots 0 and 1 (one SLOAD each) and writes slot 0 only (one SSTORE):
    /// the registers, seq, time and status share one word; slot 1 holds the money in and the seal of the terms the
    /// relayer sends (slots 2 and 7, read only when the sent terms do not match). The factor of the last report,
    /// the prepaid balance, the arrears and the earnings are derived (see the contract notes). lastTimestamp fits
    /// 40 bits because settled timestamps are at most block.timestamp + MAX_CLOCK_SKEW. Bit layout as Solidity
    /// packs it (low bits first): slot 0: lastOdometer 0..63 | lastSeq 64..127 | lastTimestamp 128..167 |
    /// lastHarsh 168..199 | lastSpeeding 200..231 | status 232..239; slot 1: deposited 0..87 | keyStamp 88..127 |
    /// termsSeal 128..255 (`keyStamp` is the vehicle's key stamp, {DeviceEventVerifier-_checkSignerStamped}: a
    /// report signed by the vehicle's own key needs no key-cache slot; the money in stays below 2^88); slot 2 (the terms word): minFactorBps 0..15 | maxFactorBps 16..31 | stepBps 32..47 |
    /// startOdometer 48..111 | startHarsh 112..143 | startSpeeding 144..175 | closeAt 176..239.
    struct Record {
        // slot 0
        uint64 lastOdometer;
        uint64 lastSeq;
        uint40 lastTimestamp;
        uint32 lastHarsh;
        uint32 lastSpeeding;
        PolicyStatus status;
        // slot 1
        uint88 deposited;
        uint40 keyStamp;
        uint128 termsSeal;
        // slot 2
        uint16 minFactorBps;
        uint16 maxFactorBps;
        uint16 stepBps;
        uint64 startOdometer;
        uint32 startHarsh;
        uint32 startSpeeding;
        uint64 closeAt;
        // slot 3
        address insurer;
        uint32 noticePeriod;
        // slot 4
        address holder;
        // slot 5
        address token;
        // slot 6
        uint128 withdrawn;
        uint128 refunded;
        // slot 7
        uint128 ratePerKm;
    }

    /// @dev Bytes per packed report: the signed report (policyId 32 | seq 8 | timestamp 8 | odometer 8 | harsh 4 |
    /// speeding 4 | r 32 | vs 32), then the policy's terms ({telematicsTerms}: ratePerKm 16 | terms word 30).
    uint256 private constant _PACKED_REPORT_SIZE = 174;
    /// @dev Offset of the terms in a packed report, and their length.
    uint256 private constant _TERMS_AT = 128;
    uint256 private constant _TERMS_SIZE = 46;

    mapping(uint256 policyId => Record) internal _policies;
    uint96 private _policyCount;

    constructor(IDeviceRegistry registry_) DeviceEventVerifier(registry_) {}

    // ---------------------------------------------------------------- policy life cycle

    /// @inheritdoc IMotorInsurance
    function offer(
        address holder,
        address vehicle,
        address token,
        uint128 ratePerKm,
        uint16 minFactorBps,
        uint16 maxFactorBps,
        uint16 stepBps,
        uint64 startOdometer,
        uint32 startHarsh,
        uint32 startSpeeding,
        uint32 noticePeriod
    ) external returns (uint256 policyId) {
        if (holder == address(0) || token == address(0)) revert ZeroAddress();
        if (ratePerKm == 0) revert ZeroRate();
        if (minFactorBps == 0 || minFactorBps > maxFactorBps || maxFactorBps > MAX_FACTOR_BPS) {
            revert InvalidFactorBounds(minFactorBps, maxFactorBps);
        }
        _checkVehicle(vehicle);

        policyId = (uint256(uint160(vehicle)) << 96) | _policyIdFlag() | ++_policyCount;
        Record storage p = _policies[policyId];
        // The unit's registers now: the first settled report pays only for what happened after this point.
        p.lastOdometer = startOdometer;
        p.lastHarsh = startHarsh;
        p.lastSpeeding = startSpeeding;
        p.ratePerKm = ratePerKm;
        p.insurer = msg.sender;
        p.minFactorBps = minFactorBps;
        p.maxFactorBps = maxFactorBps;
        p.stepBps = stepBps;
        p.status = PolicyStatus.Offered;
        p.holder = holder;
        p.noticePeriod = noticePeriod;
        p.token = token;
        p.startOdometer = startOdometer;
        p.startHarsh = startHarsh;
        p.startSpeeding = startSpeeding;
        _seal(p);
        _emitOffered(policyId, p);
    }

    /// @inheritdoc IMotorInsurance
    function cancelOffer(uint256 policyId) external {
        Record storage p = _existing(policyId);
        if (msg.sender != p.insurer && msg.sender != p.holder) revert NotParty(policyId, msg.sender);
        if (p.status != PolicyStatus.Offered) revert WrongStatus(policyId, p.status);
        p.status = PolicyStatus.Cancelled;
        emit PolicyCancelled(policyId);
    }

    /// @inheritdoc IMotorInsurance
    function accept(uint256 policyId, uint256 deposit, uint64 startOdometer, uint32 startHarsh, uint32 startSpeeding)
        external
        nonReentrant
    {
        Record storage p = _existing(policyId);
        if (msg.sender != p.holder) revert NotHolder(policyId, msg.sender);
        if (p.status != PolicyStatus.Offered) revert WrongStatus(policyId, p.status);
        if (startOdometer != p.startOdometer || startHarsh != p.startHarsh || startSpeeding != p.startSpeeding) {
            revert StartRegistersMismatch(
                policyId, p.startOdometer, p.startHarsh, p.startSpeeding, startOdometer, startHarsh, startSpeeding
            );
        }
        if (deposit == 0) revert ZeroAmount();
        if (deposit > type(uint88).max) revert BalanceOverflow(deposit);

        p.lastTimestamp = uint40(block.timestamp);
        p.deposited = uint88(deposit);
        p.status = PolicyStatus.Active;
        emit PolicyAccepted(policyId, deposit);
        // The contract must hold exactly what it records: fee-on-transfer and lying tokens are refused.
        Funds.pullToken(p.token, deposit);
    }

    /// @inheritdoc IMotorInsurance
    function topUp(uint256 policyId, uint256 amount) external nonReentrant {
        Record storage p = _existing(policyId);
        PolicyStatus status = p.status;
        if (status != PolicyStatus.Active && status != PolicyStatus.Lapsed) revert WrongStatus(policyId, status);
        if (amount == 0) revert ZeroAmount();
        uint256 newDeposited = uint256(p.deposited) + amount;
        if (newDeposited > type(uint88).max) revert BalanceOverflow(newDeposited);

        // The arrears are derived: what is owed beyond the money in; the top-up pays them first by raising it.
        uint256 arrears = _arrears(p);
        uint256 arrearsPaid = amount < arrears ? amount : arrears;
        p.deposited = uint88(newDeposited);
        emit PolicyToppedUp(policyId, msg.sender, amount, arrearsPaid);
        if (status == PolicyStatus.Lapsed && arrears == arrearsPaid) {
            p.status = PolicyStatus.Active;
            emit PolicyReinstated(policyId);
        }
        Funds.pullToken(p.token, amount);
    }

    /// @inheritdoc IMotorInsurance
    function requestClose(uint256 policyId) external {
        Record storage p = _existing(policyId);
        if (msg.sender != p.holder && msg.sender != p.insurer) revert NotParty(policyId, msg.sender);
        _checkRunning(policyId, p.status);
        if (p.closeAt != 0) return;
        uint64 closeAt = uint64(block.timestamp) + p.noticePeriod;
        p.closeAt = closeAt;
        _seal(p);
        emit CloseRequested(policyId, closeAt);
    }

    /// @inheritdoc IMotorInsurance
    function close(uint256 policyId) external nonReentrant returns (uint256 refund) {
        Record storage p = _existing(policyId);
        _checkRunning(policyId, p.status);
        uint64 closeAt = p.closeAt;
        if (closeAt == 0) revert CloseNotRequested(policyId);
        // Reports signed by closeAt may still be on their way: they settle up to and including closeAt + grace, so
        // close opens one second later and the order inside a block cannot decide the premium.
        uint256 notBefore = uint256(closeAt) + closeDelay(policyId) + 1;
        if (block.timestamp < notBefore) revert TooEarly(policyId, notBefore, block.timestamp);

        // prepaid <= deposited < 2^88; once Closed the derived prepaid balance is 0.
        refund = _prepaid(p);
        p.refunded = uint128(refund);
        p.status = PolicyStatus.Closed;
        emit PolicyClosed(policyId, refund);
        // A holder that cannot receive (blacklisted, reverting, gas-hungry) must not keep the policy open: the
        // bounded push falls back to a credit.
        _pay(p.token, p.holder, refund);
    }

    /// @inheritdoc IMotorInsurance
    function withdrawEarnings(uint256 policyId) external nonReentrant returns (uint256 amount) {
        Record storage p = _existing(policyId);
        if (msg.sender != p.insurer) revert NotInsurer(policyId, msg.sender);
        amount = _charged(p) - p.withdrawn;
        if (amount == 0) revert NoEarnings(policyId);
        // withdrawn <= charged <= deposited < 2^88.
        p.withdrawn += uint128(amount);
        emit EarningsWithdrawn(policyId, msg.sender, amount);
        _guardPayout(p.token, amount); // the account's device guard, as for a credit
        Funds.push(p.token, msg.sender, amount);
    }

    // ---------------------------------------------------------------- settlement

    /// @inheritdoc IMotorInsurance
    function settle(bytes calldata reports) external virtual returns (uint256 settled) {
        uint256 len = reports.length;
        if (len % _PACKED_REPORT_SIZE != 0) revert MalformedBatch(len);
        // One registry read per batch: the key cache is trusted only at the registry's current epoch.
        uint256 keyEpoch = _batchKeyEpoch(len / _PACKED_REPORT_SIZE);
        uint256 end;
        uint256 item;
        assembly ("memory-safe") {
            item := reports.offset
            end := add(item, len)
        }
        for (; item < end; item += _PACKED_REPORT_SIZE) {
            uint256 id;
            uint256 fields;
            // Item layout: policyId 32 | seq 8 | timestamp 8 | odometer 8 | harsh 4 | speeding 4 | r 32 | vs 32 |
            // terms 46. The fields are at their signed widths: the second word holds exactly the five narrow fields.
            assembly ("memory-safe") {
                id := calldataload(item)
                fields := calldataload(add(item, 0x20))
            }
            RejectReason reason = _settle(id, fields, item, keyEpoch);
            if (reason == RejectReason.None) {
                // Bounded by the batch length.
                unchecked {
                    ++settled;
                }
            } else {
                emit TelematicsRejected(id, uint64(fields >> 192), reason);
            }
        }
    }

    /// @dev Checks in the order documented on the contract; returns None after charging, or the reason nothing
    /// changed. `fields` = seq 192..255 | timestamp 128..191 | odometer 64..127 | harsh 32..63 | speeding 0..31;
    /// `item` is the calldata offset of the packed report (signature and terms are read from there). The policy's
    /// word (slot 0) is read and written whole (one SLOAD, one SSTORE); slot 1 (money in, seal of the terms) is
    /// read once the report passed the word's checks. `keyEpoch` is the batch's {_batchKeyEpoch}.
    function _settle(uint256 id, uint256 fields, uint256 item, uint256 keyEpoch) private returns (RejectReason reason) {
        Record storage p = _policies[id];
        uint256 word;
        assembly ("memory-safe") {
            word := sload(p.slot)
        }
        {
            uint256 status = uint8(word >> 232);
            if (status == uint256(PolicyStatus.None)) return RejectReason.UnknownTarget;
            if (fields >> 192 <= uint64(word >> 64)) return RejectReason.Replayed;
            if (status != uint256(PolicyStatus.Active)) {
                return status == uint256(PolicyStatus.Lapsed) ? RejectReason.Suspended : RejectReason.NotActive;
            }
        }
        if (
            uint64(fields >> 64) < uint64(word) || uint32(fields >> 32) < uint32(word >> 168)
                || uint32(fields) < uint32(word >> 200)
        ) {
            return RejectReason.CounterRollback;
        }
        uint64 timestamp = uint64(fields >> 128);
        reason = _checkTimestamp(timestamp, uint40(word >> 128));
        if (reason != RejectReason.None) return reason;
        (uint256 terms, uint256 rate, uint256 money) = _termsOf(p, item);
        {
            uint256 closeAt = uint64(terms >> 176);
            if (closeAt != 0 && uint64(fields >> 128) > closeAt) return RejectReason.AfterEnd;
        }
        uint256 stamp = uint40(money >> 88);
        (reason, stamp) = _checkSignature(id, fields, item, keyEpoch, stamp);
        if (reason != RejectReason.None) return reason;
        if (stamp != uint40(money >> 88)) {
            // A new stamp (the first report after a key retirement anywhere in the registry): slot 1 is warm.
            assembly ("memory-safe") {
                sstore(add(p.slot, 1), or(and(money, not(shl(88, 0xffffffffff))), shl(88, stamp)))
            }
        }
        _charge(p, word, terms, rate, uint88(money), id, fields);
    }

    /// @dev The checks of a report against its policy's word (slot 0), in the documented order: status, replay,
    /// registers, timestamp. {_settle} writes the same checks out inline: a call there costs ≈ 57 gas a report
    /// under the IR pipeline (measured); the optimistic claims of {OptimisticMotor} use this one.
    function _checkWord(uint256 word, uint256 fields) internal view returns (RejectReason) {
        {
            uint256 status = uint8(word >> 232);
            if (status == uint256(PolicyStatus.None)) return RejectReason.UnknownTarget;
            if (fields >> 192 <= uint64(word >> 64)) return RejectReason.Replayed;
            if (status != uint256(PolicyStatus.Active)) {
                return status == uint256(PolicyStatus.Lapsed) ? RejectReason.Suspended : RejectReason.NotActive;
            }
        }
        if (
            uint64(fields >> 64) < uint64(word) || uint32(fields >> 32) < uint32(word >> 168)
                || uint32(fields) < uint32(word >> 200)
        ) {
            return RejectReason.CounterRollback;
        }
        return _checkTimestamp(uint64(fields >> 128), uint40(word >> 128));
    }

    /// @dev {_checkSignerStamped} of the report at calldata offset `item`: signed by the current key of the VEHICLE
    /// encoded in the policy id; `stamp` is the policy's key stamp, and the stamp to keep is returned.
    function _checkSignature(uint256 id, uint256 fields, uint256 item, uint256 keyEpoch, uint256 stamp)
        private
        returns (RejectReason, uint256)
    {
        bytes32 r;
        bytes32 vs;
        assembly ("memory-safe") {
            r := calldataload(add(item, 0x40))
            vs := calldataload(add(item, 0x60))
        }
        return _checkSignerStamped(
            _structHash(id, fields),
            r,
            vs,
            address(uint160(id >> 96)),
            _VEHICLE_KIND,
            uint64(fields >> 128),
            keyEpoch,
            stamp,
            type(uint40).max
        );
    }

    /// @dev The policy's terms word and rate, and slot 1 (the money in is its low 88 bits): the terms sent in the
    /// report at `item` when they match the seal in slot 1, else the stored ones (slots 2 and 7), so false or stale
    /// terms change nothing.
    function _termsOf(Record storage p, uint256 item)
        internal
        view
        returns (uint256 terms, uint256 rate, uint256 money)
    {
        uint256 sent;
        assembly ("memory-safe") {
            money := sload(add(p.slot, 1))
            let at := add(item, _TERMS_AT)
            // Hashed in free memory without allocating it.
            let fmp := mload(0x40)
            calldatacopy(fmp, at, _TERMS_SIZE)
            sent := keccak256(fmp, _TERMS_SIZE)
            rate := shr(128, calldataload(at))
            terms := shr(16, calldataload(add(at, 16)))
        }
        if (sent >> 128 != money >> 128) (terms, rate) = _storedTerms(p);
    }

    /// @dev Price the report, write the policy's word once and emit: the checks passed. The {PremiumCharged} record
    /// is seq 192..255 | metres 128..191 | harshBraking 96..127 | speeding 64..95 | factorBps 48..63.
    function _charge(
        Record storage p,
        uint256 word,
        uint256 terms,
        uint256 rate,
        uint256 deposited,
        uint256 id,
        uint256 fields
    ) internal {
        (uint16 factorBps, uint256 owed0, uint256 owed1) = _price(
            terms,
            rate,
            uint64(word),
            uint256(uint32(word >> 168)) + uint32(word >> 200),
            uint64(fields >> 64),
            uint256(uint32(fields >> 32)) + uint32(fields)
        );
        bool lapses = owed1 > deposited;
        _store(p, fields, lapses);
        // All three registers were checked not to go down, and F only grows with them (owed1 >= owed0).
        unchecked {
            uint256 record = ((fields >> 192) << 192) | (uint256(uint64(fields >> 64) - uint64(word)) << 128)
                | (uint256(uint32(fields >> 32) - uint32(word >> 168)) << 96)
                | (uint256(uint32(fields) - uint32(word >> 200)) << 64) | (uint256(factorBps) << 48);
            emit PremiumCharged(id, record, owed1 - owed0);
            if (lapses) emit PolicyLapsed(id, owed1 - deposited);
        }
    }

    /// @dev The policy's word after a settled report, written in one SSTORE: its registers, seq and time, and the
    /// status (Lapsed when the premiums passed the money in). The timestamp passed the skew check (< 2^40).
    function _store(Record storage p, uint256 fields, bool lapses) private {
        uint256 status = uint256(lapses ? PolicyStatus.Lapsed : PolicyStatus.Active);
        uint256 word = uint256(uint64(fields >> 64)) | ((fields >> 192) << 64) | (uint256(uint64(fields >> 128)) << 128)
            | (uint256(uint32(fields >> 32)) << 168) | (uint256(uint32(fields)) << 200) | (status << 232);
        assembly ("memory-safe") {
            sstore(p.slot, word)
        }
    }

    /// @dev Pricing of a report moving the registers from (odometer0, events0) to (odometer1, events1), none of
    /// them lower (events = harsh-braking + speeding count), from the policy's terms word (layout of slot 2) and
    /// rate: the factor of the totals after and floor(F) of the totals before and after (the charge is their
    /// difference; F is the formula of {IMotorInsurance}). The starting registers are at most the last settled
    /// ones (offer sets both, settle only raises the last), so the totals since the offer do not underflow.
    /// F is monotone non-decreasing in the metres (both terms of the min grow, by minF ≤ maxF and maxF per metre)
    /// and in the events, for any terms. metres < 2^64 and factors < 2^16, events < 2^33, step < 2^16, 100_000 <
    /// 2^17: the weighted distance is below 2^82, times ratePerKm < 2^128 below 2^210, so nothing overflows.
    function _price(
        uint256 terms,
        uint256 rate,
        uint256 odometer0,
        uint256 events0,
        uint256 odometer1,
        uint256 events1
    ) internal pure returns (uint16 factorBps, uint256 owed0, uint256 owed1) {
        // start ≤ last ≤ new for every register (see above); callers pass the registers as read or checked. Within
        // the widths above no product overflows. F is written out once for both totals (not two
        // calls): this runs for every settled report.
        unchecked {
            uint256 minF = uint16(terms);
            uint256 maxF = uint16(terms >> 16);
            {
                uint256 startOdometer = uint64(terms >> 48);
                odometer0 -= startOdometer;
                odometer1 -= startOdometer;
            }
            {
                // From here on the events are weighted: events since the offer × stepBps × 100_000.
                uint256 startEvents = uint256(uint32(terms >> 112)) + uint32(terms >> 144);
                uint256 perEvent = uint256(uint16(terms >> 32)) * _STEP_DISTANCE_METRES;
                events0 = (events0 - startEvents) * perEvent;
                events1 = (events1 - startEvents) * perEvent;
            }
            owed0 = odometer0 * minF + events0;
            if (owed0 > odometer0 * maxF) owed0 = odometer0 * maxF;
            owed0 = owed0 * rate / _PRICE_DIVISOR;
            owed1 = odometer1 * minF + events1;
            if (owed1 > odometer1 * maxF) owed1 = odometer1 * maxF;
            owed1 = owed1 * rate / _PRICE_DIVISOR;
            // The factor of the totals: min + events per 100 km × step, capped (at most maxF <= MAX_FACTOR_BPS,
            // which fits uint16); no distance yet: the minimum if there is nothing to weigh, else the cap.
            if (odometer1 == 0) {
                factorBps = uint16(events1 == 0 ? minF : maxF);
            } else {
                uint256 factor = minF + events1 / odometer1;
                factorBps = uint16(factor < maxF ? factor : maxF);
            }
        }
    }

    /// @dev The stored terms word (slot 2) and rate: what the sealed terms of a report stand for.
    function _storedTerms(Record storage p) private view returns (uint256 terms, uint256 rate) {
        assembly ("memory-safe") {
            terms := sload(add(p.slot, 2))
        }
        rate = p.ratePerKm;
    }

    /// @dev The terms a relayer sends with a report: ratePerKm (16 bytes) ‖ the terms word (30 bytes), big-endian.
    function _packedTerms(Record storage p) private view returns (bytes memory) {
        (uint256 terms, uint256 rate) = _storedTerms(p);
        return abi.encodePacked(uint128(rate), uint240(terms));
    }

    /// @dev Seal the terms as they are now (offer, close request): the high 128 bits of their keccak.
    function _seal(Record storage p) private {
        p.termsSeal = uint128(uint256(keccak256(_packedTerms(p))) >> 128);
    }

    /// @dev floor(F) of the last settled totals: every premium charged on the policy so far, arrears included.
    function _owed(Record storage p) private view returns (uint256 owed) {
        (uint256 terms, uint256 rate) = _storedTerms(p);
        uint256 events = uint256(p.lastHarsh) + p.lastSpeeding;
        (,, owed) = _price(terms, rate, p.lastOdometer, events, p.lastOdometer, events);
    }

    /// @dev The prepaid balance: the money in that the premiums have not used, while the policy runs (an offer has
    /// none, a closed policy refunded it).
    function _prepaid(Record storage p) private view returns (uint256) {
        PolicyStatus status = p.status;
        if (status != PolicyStatus.Active && status != PolicyStatus.Lapsed) return 0;
        uint256 owed = _owed(p);
        uint256 deposited = p.deposited;
        return owed < deposited ? deposited - owed : 0;
    }

    /// @dev What the premiums owe beyond the money in (recorded even after close).
    function _arrears(Record storage p) private view returns (uint256) {
        uint256 owed = _owed(p);
        uint256 deposited = p.deposited;
        return owed > deposited ? owed - deposited : 0;
    }

    /// @dev `keccak256(abi.encode(TELEMATICS_TYPEHASH, id, seq, timestamp, odometer, harsh, speeding))` of the packed
    /// `fields` (layout at {_settle}), in free memory without allocating it.
    function _structHash(uint256 id, uint256 fields) internal pure returns (bytes32 structHash) {
        bytes32 typehash = TELEMATICS_TYPEHASH;
        assembly ("memory-safe") {
            let fmp := mload(0x40)
            mstore(fmp, typehash)
            mstore(add(fmp, 0x20), id)
            mstore(add(fmp, 0x40), shr(192, fields))
            mstore(add(fmp, 0x60), and(shr(128, fields), 0xffffffffffffffff))
            mstore(add(fmp, 0x80), and(shr(64, fields), 0xffffffffffffffff))
            mstore(add(fmp, 0xa0), and(shr(32, fields), 0xffffffff))
            mstore(add(fmp, 0xc0), and(fields, 0xffffffff))
            structHash := keccak256(fmp, 0xe0)
        }
    }

    // ---------------------------------------------------------------- views

    /// @inheritdoc IMotorInsurance
    function policyOf(uint256 policyId) external view returns (Policy memory policy) {
        Record storage p = _policies[policyId];
        policy.insurer = p.insurer;
        policy.holder = p.holder;
        // An unknown id reports no vehicle.
        policy.vehicle = p.status == PolicyStatus.None ? address(0) : address(uint160(policyId >> 96));
        policy.token = p.token;
        policy.ratePerKm = p.ratePerKm;
        policy.minFactorBps = p.minFactorBps;
        policy.maxFactorBps = p.maxFactorBps;
        policy.stepBps = p.stepBps;
        policy.status = p.status;
        policy.noticePeriod = p.noticePeriod;
        policy.closeAt = p.closeAt;
        policy.startOdometer = p.startOdometer;
        policy.lastOdometer = p.lastOdometer;
        policy.lastHarsh = p.lastHarsh;
        policy.lastSpeeding = p.lastSpeeding;
        policy.lastSeq = p.lastSeq;
        policy.lastTimestamp = p.lastTimestamp;
        {
            (uint256 terms, uint256 rate) = _storedTerms(p);
            uint256 events = uint256(p.lastHarsh) + p.lastSpeeding;
            (policy.lastFactorBps,,) = _price(terms, rate, p.lastOdometer, events, p.lastOdometer, events);
        }
        policy.prepaid = _prepaid(p);
        policy.arrears = _arrears(p);
        policy.charged = _charged(p);
        policy.withdrawn = p.withdrawn;
        policy.deposited = p.deposited;
        policy.refunded = p.refunded;
        policy.startHarsh = p.startHarsh;
        policy.startSpeeding = p.startSpeeding;
    }

    /// @inheritdoc IMotorInsurance
    function telematicsTerms(uint256 policyId) external view returns (bytes memory) {
        return _packedTerms(_existing(policyId));
    }

    /// @inheritdoc IMotorInsurance
    function hashTelematics(
        uint256 policyId,
        uint64 seq,
        uint64 timestamp,
        uint64 odometer,
        uint32 harshBraking,
        uint32 speeding
    ) external view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(abi.encode(TELEMATICS_TYPEHASH, policyId, seq, timestamp, odometer, harshBraking, speeding))
        );
    }

    /// @inheritdoc IMotorInsurance
    function quote(uint256 policyId, uint64 odometer, uint32 harshBraking, uint32 speeding)
        external
        view
        returns (uint64 metres, uint16 factorBps, uint256 amount)
    {
        Record storage p = _existing(policyId);
        uint64 lastOdometer = p.lastOdometer;
        if (odometer < lastOdometer || harshBraking < p.lastHarsh || speeding < p.lastSpeeding) {
            revert EventRejected(policyId, 0, RejectReason.CounterRollback);
        }
        metres = odometer - lastOdometer;
        (factorBps, amount) = _quote(p, odometer, uint256(harshBraking) + speeding);
    }

    /// @dev The factor and charge of a report with registers `odometer` and `events` (checked not below the last).
    function _quote(Record storage p, uint256 odometer, uint256 events) private view returns (uint16, uint256) {
        (uint256 terms, uint256 rate) = _storedTerms(p);
        (uint16 factorBps, uint256 owed0, uint256 owed1) =
            _price(terms, rate, p.lastOdometer, uint256(p.lastHarsh) + p.lastSpeeding, odometer, events);
        return (factorBps, owed1 - owed0);
    }

    /// @inheritdoc IMotorInsurance
    function closeDelay(uint256) public view virtual returns (uint256) {
        return SETTLEMENT_GRACE;
    }

    // ---------------------------------------------------------------- internals

    /// @dev Set in every policy id minted here, besides the vehicle and the count: none ({OptimisticMotor} sets one).
    function _policyIdFlag() internal pure virtual returns (uint256) {
        return 0;
    }

    function _existing(uint256 policyId) private view returns (Record storage p) {
        p = _policies[policyId];
        if (p.status == PolicyStatus.None) revert UnknownPolicy(policyId);
    }

    /// @dev Active or Lapsed: the states a policy can be topped up, asked to close and closed in.
    function _checkRunning(uint256 policyId, PolicyStatus status) private pure {
        if (status != PolicyStatus.Active && status != PolicyStatus.Lapsed) revert WrongStatus(policyId, status);
    }

    /// @dev The unit must be an active VEHICLE; the insurer pays for its key's cache slot here, once, rather than
    /// its first report.
    function _checkVehicle(address vehicle) private {
        IDeviceRegistry.Device memory d = _REGISTRY.deviceOf(vehicle);
        if (d.status != IDeviceRegistry.DeviceStatus.Active) revert UnknownDevice(vehicle);
        if (d.kind != IDeviceRegistry.DeviceKind.Vehicle) revert WrongDeviceKind(vehicle);
        _warmKeyCache(d.key);
    }

    /// @dev Premiums earned by the insurer: everything deposited that is neither prepaid nor refunded.
    function _charged(Record storage p) private view returns (uint256) {
        return uint256(p.deposited) - _prepaid(p) - p.refunded;
    }

    function _emitOffered(uint256 policyId, Record storage p) private {
        emit PolicyOffered(
            policyId,
            p.insurer,
            p.holder,
            address(uint160(policyId >> 96)),
            p.token,
            p.ratePerKm,
            p.minFactorBps,
            p.maxFactorBps,
            p.stepBps,
            p.startOdometer,
            p.noticePeriod,
            p.startHarsh,
            p.startSpeeding
        );
    }
}
