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
/// Every {PremiumCharged} event carries the period's metres and event counts and the factor of the totals, so the
/// holder sees why the rate moved. When the prepaid balance runs short the rest becomes arrears and the policy
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
/// Money: the insurer's earnings are derived (charged = deposited − prepaid − refunded), so a settled report
/// writes the prepaid balance only. The refund is paid with a bounded push that becomes a pull credit
/// ({PullPayments}) when it fails.
contract MotorInsurance is IMotorInsurance, DeviceEventVerifier, PullPayments {
    bytes32 public constant TELEMATICS_TYPEHASH = keccak256(
        "Telematics(uint256 policyId,uint64 seq,uint64 timestamp,uint64 odometer,uint32 harshBraking,uint32 speeding)"
    );

    /// @inheritdoc IMotorInsurance
    uint16 public constant MAX_FACTOR_BPS = 50_000;

    /// @dev Factor 1.0 in basis points.
    uint256 private constant _BPS = 10_000;
    /// @dev Metres per km: the rate is per km, the odometer counts metres.
    uint256 private constant _METRES_PER_KM = 1_000;
    /// @dev `stepBps` applies per event per 100 km = 100_000 m.
    uint256 private constant _STEP_DISTANCE_METRES = 100_000;

    uint256 private constant _VEHICLE_KIND = 1 << uint8(IDeviceRegistry.DeviceKind.Vehicle);

    /// @dev Per-policy storage. `settle` reads slots 0–2 and writes slot 0 always and slot 1 when it charges: the
    /// registers, factor and status share one word, and slot 2 holds everything else the price and the checks need
    /// (factor terms, starting registers, closeAt). lastTimestamp fits 40 bits because settled timestamps are at
    /// most block.timestamp + MAX_CLOCK_SKEW.
    struct Record {
        // slot 0
        uint64 lastOdometer;
        uint64 lastSeq;
        uint40 lastTimestamp;
        uint32 lastHarsh;
        uint32 lastSpeeding;
        uint16 lastFactorBps;
        PolicyStatus status;
        // slot 1
        uint128 ratePerKm;
        uint128 prepaid;
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
        uint128 deposited;
        uint128 withdrawn;
        // slot 7
        uint128 refunded;
        // slot 8: can exceed 128 bits for extreme terms (premiums are computed in 256 bits)
        uint256 arrears;
    }

    mapping(uint256 policyId => Record) private _policies;
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

        policyId = (uint256(uint160(vehicle)) << 96) | ++_policyCount;
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
        p.lastFactorBps = minFactorBps;
        p.status = PolicyStatus.Offered;
        p.holder = holder;
        p.noticePeriod = noticePeriod;
        p.token = token;
        p.startOdometer = startOdometer;
        p.startHarsh = startHarsh;
        p.startSpeeding = startSpeeding;
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
        if (deposit > type(uint128).max) revert BalanceOverflow(deposit);

        p.lastTimestamp = uint40(block.timestamp);
        p.prepaid = uint128(deposit);
        p.deposited = uint128(deposit);
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
        if (newDeposited > type(uint128).max) revert BalanceOverflow(newDeposited);

        uint256 arrears = p.arrears;
        uint256 arrearsPaid = amount < arrears ? amount : arrears;
        // arrearsPaid <= amount and <= arrears; prepaid <= deposited, so the new prepaid fits uint128 as well.
        unchecked {
            p.arrears = arrears - arrearsPaid;
            p.prepaid = uint128(p.prepaid + (amount - arrearsPaid));
        }
        p.deposited = uint128(newDeposited);
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
        uint256 notBefore = uint256(closeAt) + SETTLEMENT_GRACE + 1;
        if (block.timestamp < notBefore) revert TooEarly(policyId, notBefore, block.timestamp);

        refund = p.prepaid;
        p.prepaid = 0;
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
        // withdrawn <= charged <= deposited, which fits uint128.
        p.withdrawn += uint128(amount);
        emit EarningsWithdrawn(policyId, msg.sender, amount);
        Funds.push(p.token, msg.sender, amount);
    }

    // ---------------------------------------------------------------- settlement

    /// @inheritdoc IMotorInsurance
    function settle(SignedTelematics[] calldata reports) external returns (uint256 settled) {
        uint256 n = reports.length;
        for (uint256 i = 0; i < n; ++i) {
            SignedTelematics calldata rep = reports[i];
            RejectReason reason = _settle(rep);
            if (reason == RejectReason.None) {
                // Bounded by the array length.
                unchecked {
                    ++settled;
                }
            } else {
                emit TelematicsRejected(rep.policyId, rep.seq, reason);
            }
        }
    }

    /// @dev Checks in the order documented on the contract; returns None after charging, or the reason nothing
    /// changed.
    function _settle(SignedTelematics calldata rep) private returns (RejectReason) {
        uint256 id = rep.policyId;
        Record storage p = _policies[id];
        {
            PolicyStatus status = p.status;
            if (status == PolicyStatus.None) return RejectReason.UnknownTarget;
            if (rep.seq <= p.lastSeq) return RejectReason.Replayed;
            if (status != PolicyStatus.Active) {
                return status == PolicyStatus.Lapsed ? RejectReason.Suspended : RejectReason.NotActive;
            }
        }
        uint64 lastOdometer = p.lastOdometer;
        uint32 lastHarsh = p.lastHarsh;
        uint32 lastSpeeding = p.lastSpeeding;
        if (rep.odometer < lastOdometer || rep.harshBraking < lastHarsh || rep.speeding < lastSpeeding) {
            return RejectReason.CounterRollback;
        }
        {
            RejectReason reason = _checkTimestamp(rep.timestamp, p.lastTimestamp);
            if (reason != RejectReason.None) return reason;
            uint64 closeAt = p.closeAt;
            if (closeAt != 0 && rep.timestamp > closeAt) return RejectReason.AfterEnd;
            reason =
                _checkSigner(_structHash(rep), rep.r, rep.vs, address(uint160(id >> 96)), _VEHICLE_KIND, rep.timestamp);
            if (reason != RejectReason.None) return reason;
        }

        (uint16 factorBps, uint256 amount) = _price(
            p, lastOdometer, uint256(lastHarsh) + lastSpeeding, rep.odometer, uint256(rep.harshBraking) + rep.speeding
        );

        // All in slot 0 (one cold write, the other fields are warm). The timestamp passed the skew check: < 2^40.
        p.lastOdometer = rep.odometer;
        p.lastSeq = rep.seq;
        p.lastTimestamp = uint40(rep.timestamp);
        p.lastHarsh = rep.harshBraking;
        p.lastSpeeding = rep.speeding;
        p.lastFactorBps = factorBps;
        // All three registers were checked not to go down.
        unchecked {
            emit PremiumCharged(
                id,
                rep.seq,
                rep.odometer - lastOdometer,
                rep.harshBraking - lastHarsh,
                rep.speeding - lastSpeeding,
                factorBps,
                amount
            );
        }
        if (amount != 0) _take(id, p, amount);
        return RejectReason.None;
    }

    /// @dev Take `amount` from the prepaid balance; a shortfall becomes arrears and lapses the policy.
    function _take(uint256 id, Record storage p, uint256 amount) private {
        uint256 prepaid = p.prepaid;
        if (amount <= prepaid) {
            // Checked just above.
            unchecked {
                p.prepaid = uint128(prepaid - amount);
            }
            return;
        }
        uint256 arrears = p.arrears + (amount - prepaid);
        p.prepaid = 0;
        p.arrears = arrears;
        p.status = PolicyStatus.Lapsed;
        emit PolicyLapsed(id, arrears);
    }

    /// @dev The charge of a report moving the registers from (odometer0, events0) to (odometer1, events1), none of
    /// them lower (events = harsh-braking + speeding count): floor(F(totals after)) − floor(F(totals before)), with
    /// the factor of the totals after. The starting registers are at most the last settled ones (offer sets both,
    /// settle only raises the last), so the totals since the offer do not underflow.
    function _price(Record storage p, uint256 odometer0, uint256 events0, uint256 odometer1, uint256 events1)
        private
        view
        returns (uint16 factorBps, uint256 amount)
    {
        {
            uint256 startOdometer = p.startOdometer;
            uint256 startEvents = uint256(p.startHarsh) + p.startSpeeding;
            // start ≤ last ≤ new for every register (see above); callers pass the registers as read or checked.
            unchecked {
                odometer0 -= startOdometer;
                odometer1 -= startOdometer;
                events0 -= startEvents;
                events1 -= startEvents;
            }
        }
        uint256 rate = p.ratePerKm;
        uint256 minF = p.minFactorBps;
        uint256 maxF = p.maxFactorBps;
        uint256 step = p.stepBps;
        // F is monotone in both totals (see _cumulativePremium), so the difference is never negative.
        amount = _cumulativePremium(odometer1, events1, rate, minF, maxF, step)
            - _cumulativePremium(odometer0, events0, rate, minF, maxF, step);
        factorBps = _factorOf(odometer1, events1, minF, maxF, step);
    }

    /// @dev floor(F(metres, events)): the premium of a policy whose totals since the offer are `metres` and `events`
    /// (the formula of {IMotorInsurance}). Monotone non-decreasing in `metres` (both terms of the min grow, by
    /// minF ≤ maxF and maxF per metre) and in `events`, for any terms. metres < 2^64 and factors < 2^16, events <
    /// 2^33, step < 2^16, 100_000 < 2^17: the weighted distance is below 2^82, times ratePerKm < 2^128 below 2^210.
    function _cumulativePremium(
        uint256 metres,
        uint256 events,
        uint256 ratePerKm,
        uint256 minFactorBps,
        uint256 maxFactorBps,
        uint256 stepBps
    ) internal pure returns (uint256) {
        // Within the widths above every product stays below 2^210: nothing can overflow.
        unchecked {
            uint256 weighted = metres * minFactorBps + events * stepBps * _STEP_DISTANCE_METRES;
            uint256 cap = metres * maxFactorBps;
            if (weighted > cap) weighted = cap;
            return weighted * ratePerKm / (_METRES_PER_KM * _BPS);
        }
    }

    /// @dev The behaviour factor of the totals, for the events and views: min + events per 100 km × step, capped;
    /// no distance yet: the minimum if there is nothing to weigh, else the cap.
    function _factorOf(uint256 metres, uint256 events, uint256 minFactorBps, uint256 maxFactorBps, uint256 stepBps)
        private
        pure
        returns (uint16)
    {
        // events < 2^33, stepBps < 2^16, 100_000 < 2^17: extra < 2^66, and the factor before the cap < 2^67.
        unchecked {
            uint256 extra = events * stepBps * _STEP_DISTANCE_METRES;
            if (metres == 0) return uint16(extra == 0 ? minFactorBps : maxFactorBps);
            uint256 factor = minFactorBps + extra / metres;
            // The result is at most maxFactorBps <= MAX_FACTOR_BPS, which fits uint16.
            return uint16(factor < maxFactorBps ? factor : maxFactorBps);
        }
    }

    function _structHash(SignedTelematics calldata rep) private pure returns (bytes32) {
        return keccak256(
            abi.encode(
                TELEMATICS_TYPEHASH, rep.policyId, rep.seq, rep.timestamp, rep.odometer, rep.harshBraking, rep.speeding
            )
        );
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
        policy.lastFactorBps = p.lastFactorBps;
        policy.prepaid = p.prepaid;
        policy.arrears = p.arrears;
        policy.charged = _charged(p);
        policy.withdrawn = p.withdrawn;
        policy.deposited = p.deposited;
        policy.refunded = p.refunded;
        policy.startHarsh = p.startHarsh;
        policy.startSpeeding = p.startSpeeding;
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
        uint32 lastHarsh = p.lastHarsh;
        uint32 lastSpeeding = p.lastSpeeding;
        if (odometer < lastOdometer || harshBraking < lastHarsh || speeding < lastSpeeding) {
            revert EventRejected(policyId, 0, RejectReason.CounterRollback);
        }
        metres = odometer - lastOdometer;
        (factorBps, amount) =
            _price(p, lastOdometer, uint256(lastHarsh) + lastSpeeding, odometer, uint256(harshBraking) + speeding);
    }

    // ---------------------------------------------------------------- internals

    function _existing(uint256 policyId) private view returns (Record storage p) {
        p = _policies[policyId];
        if (p.status == PolicyStatus.None) revert UnknownPolicy(policyId);
    }

    /// @dev Active or Lapsed: the states a policy can be topped up, asked to close and closed in.
    function _checkRunning(uint256 policyId, PolicyStatus status) private pure {
        if (status != PolicyStatus.Active && status != PolicyStatus.Lapsed) revert WrongStatus(policyId, status);
    }

    function _checkVehicle(address vehicle) private view {
        IDeviceRegistry.Device memory d = _REGISTRY.deviceOf(vehicle);
        if (d.status != IDeviceRegistry.DeviceStatus.Active) revert UnknownDevice(vehicle);
        if (d.kind != IDeviceRegistry.DeviceKind.Vehicle) revert WrongDeviceKind(vehicle);
    }

    /// @dev Premiums earned by the insurer: everything deposited that is neither prepaid nor refunded.
    function _charged(Record storage p) private view returns (uint256) {
        return uint256(p.deposited) - p.prepaid - p.refunded;
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
