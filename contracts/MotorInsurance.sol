// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

import {DeviceEventVerifier} from "./DeviceEventVerifier.sol";
import {IDeviceRegistry} from "./interfaces/IDeviceRegistry.sol";
import {IMotorInsurance} from "./interfaces/IMotorInsurance.sol";

/// @title MotorInsurance: pay-per-km premiums from a vehicle's device-signed odometer, with a behaviour factor.
/// @notice An insurer offers a policy for one VEHICLE device; the holder accepts with a prepaid deposit. `settle`
/// charges, per signed Telematics report, the metres driven since the last settled report at `ratePerKm` times a
/// behaviour factor: `minFactorBps` for a clean period, plus `stepBps` per harsh-braking or speeding event per
/// 100 km, capped at `maxFactorBps` (formula in {IMotorInsurance}). The offer fixes the unit's three registers
/// as they read at the start (odometer, harsh-braking and speeding counts), so the first period is priced on what
/// happened after it, not on the unit's history. The bounds are fixed when the policy is offered,
/// and every {PremiumCharged} event carries the period's metres, event counts and factor, so the holder sees why
/// the rate moved. When the prepaid balance runs short the rest becomes arrears and the policy lapses until a
/// top-up pays them.
///
/// Report checks, cheapest first (the first failing one is the reason reported): unknown policy → UnknownTarget;
/// seq ≤ last settled seq → Replayed (whatever the status is now, so racing relayers see Replayed); Lapsed →
/// Suspended; not Active → NotActive; any register below the last settled value → CounterRollback; timestamp
/// beyond now + MAX_CLOCK_SKEW or before the last settled report (or acceptance) → TimestampInFuture/TooOld;
/// then the signature: the current key of the VEHICLE encoded in the policy id.
///
/// Money: the insurer's earnings are derived (charged = deposited − prepaid − refunded), so a settled report
/// writes the prepaid balance only. Refunds are pushed; a failed push becomes a pull credit ({withdraw}).
contract MotorInsurance is IMotorInsurance, DeviceEventVerifier, ReentrancyGuard {
    using SafeERC20 for IERC20;

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
    /// registers, factor and status share one word. lastTimestamp fits 40 bits because settled timestamps are at
    /// most block.timestamp + MAX_CLOCK_SKEW. The starting counters fill spare room in slots 2 and 4, which `offer`
    /// writes anyway, so fixing them costs no extra storage slot.
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
        address insurer;
        uint16 minFactorBps;
        uint16 maxFactorBps;
        uint16 stepBps;
        uint32 startSpeeding;
        // slot 3
        address holder;
        uint32 noticePeriod;
        uint64 closeAt;
        // slot 4
        address token;
        uint64 startOdometer;
        uint32 startHarsh;
        // slot 5
        uint128 deposited;
        uint128 withdrawn;
        // slot 6
        uint128 refunded;
        // slot 7: can exceed 128 bits for extreme terms (premiums are computed in 256 bits)
        uint256 arrears;
    }

    mapping(uint256 policyId => Record) private _policies;
    mapping(address account => mapping(address token => uint256)) private _credits;
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
    function accept(uint256 policyId, uint256 deposit) external nonReentrant {
        Record storage p = _existing(policyId);
        if (msg.sender != p.holder) revert NotHolder(policyId, msg.sender);
        if (p.status != PolicyStatus.Offered) revert WrongStatus(policyId, p.status);
        if (deposit == 0) revert ZeroAmount();
        if (deposit > type(uint128).max) revert BalanceOverflow(deposit);

        p.lastTimestamp = uint40(block.timestamp);
        p.prepaid = uint128(deposit);
        p.deposited = uint128(deposit);
        p.status = PolicyStatus.Active;
        emit PolicyAccepted(policyId, deposit);
        _pullFunds(p.token, deposit);
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
        _pullFunds(p.token, amount);
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
        if (block.timestamp < closeAt) revert NoticeNotOver(policyId, closeAt, block.timestamp);

        refund = p.prepaid;
        p.prepaid = 0;
        p.refunded = uint128(refund);
        p.status = PolicyStatus.Closed;
        emit PolicyClosed(policyId, refund);
        if (refund == 0) return 0;
        address holder = p.holder;
        address token = p.token;
        // A holder that cannot receive the token (blacklisted, reverting) must not keep the policy open: credit it.
        if (!IERC20(token).trySafeTransfer(holder, refund)) {
            _credits[holder][token] += refund;
            emit RefundCredited(policyId, holder, refund);
        }
    }

    /// @inheritdoc IMotorInsurance
    function withdrawPremiums(uint256 policyId) external nonReentrant returns (uint256 amount) {
        Record storage p = _existing(policyId);
        if (msg.sender != p.insurer) revert NotInsurer(policyId, msg.sender);
        amount = _charged(p) - p.withdrawn;
        if (amount == 0) revert NothingToWithdraw(policyId);
        // withdrawn <= charged <= deposited, which fits uint128.
        p.withdrawn += uint128(amount);
        emit PremiumsWithdrawn(policyId, amount);
        IERC20(p.token).safeTransfer(msg.sender, amount);
    }

    /// @inheritdoc IMotorInsurance
    function withdraw(address token) external nonReentrant returns (uint256 amount) {
        amount = _credits[msg.sender][token];
        if (amount == 0) revert NoCredit(msg.sender, token);
        _credits[msg.sender][token] = 0;
        emit CreditWithdrawn(msg.sender, token, amount);
        IERC20(token).safeTransfer(msg.sender, amount);
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
        PolicyStatus status = p.status;
        if (status == PolicyStatus.None) return RejectReason.UnknownTarget;
        if (rep.seq <= p.lastSeq) return RejectReason.Replayed;
        if (status != PolicyStatus.Active) {
            return status == PolicyStatus.Lapsed ? RejectReason.Suspended : RejectReason.NotActive;
        }
        uint64 lastOdometer = p.lastOdometer;
        uint32 lastHarsh = p.lastHarsh;
        uint32 lastSpeeding = p.lastSpeeding;
        if (rep.odometer < lastOdometer || rep.harshBraking < lastHarsh || rep.speeding < lastSpeeding) {
            return RejectReason.CounterRollback;
        }
        RejectReason reason = _checkTimestamp(rep.timestamp, p.lastTimestamp);
        if (reason != RejectReason.None) return reason;
        reason = _checkSigner(_structHash(rep), rep.r, rep.vs, address(uint160(id >> 96)), _VEHICLE_KIND);
        if (reason != RejectReason.None) return reason;

        // All three registers were checked not to go down.
        uint64 metres;
        uint32 harsh;
        uint32 speeding;
        unchecked {
            metres = rep.odometer - lastOdometer;
            harsh = rep.harshBraking - lastHarsh;
            speeding = rep.speeding - lastSpeeding;
        }
        (uint16 factorBps, uint256 amount) = _premium(p, metres, uint256(harsh) + speeding);

        // All in slot 0 (one cold write, the other fields are warm). The timestamp passed the skew check: < 2^40.
        p.lastOdometer = rep.odometer;
        p.lastSeq = rep.seq;
        p.lastTimestamp = uint40(rep.timestamp);
        p.lastHarsh = rep.harshBraking;
        p.lastSpeeding = rep.speeding;
        p.lastFactorBps = factorBps;
        emit PremiumCharged(id, rep.seq, metres, harsh, speeding, factorBps, amount);
        if (amount != 0) _charge(id, p, amount);
        return RejectReason.None;
    }

    /// @dev Take `amount` from the prepaid balance; a shortfall becomes arrears and lapses the policy.
    function _charge(uint256 id, Record storage p, uint256 amount) private {
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

    /// @dev The premium formula of {IMotorInsurance}. `events` < 2^33, `stepBps` < 2^16: the factor term fits
    /// easily; metres < 2^64, ratePerKm < 2^128, factorBps ≤ 50_000 < 2^16: the product is below 2^208.
    function _premium(Record storage p, uint64 metres, uint256 events)
        private
        view
        returns (uint16 factorBps, uint256 amount)
    {
        uint256 maxFactor = p.maxFactorBps;
        if (metres == 0) {
            return (events == 0 ? p.lastFactorBps : uint16(maxFactor), 0);
        }
        uint256 factor = p.minFactorBps + events * p.stepBps * _STEP_DISTANCE_METRES / metres;
        if (factor > maxFactor) factor = maxFactor;
        // factor <= maxFactorBps <= MAX_FACTOR_BPS fits uint16.
        factorBps = uint16(factor);
        amount = uint256(metres) * p.ratePerKm * factor / (_METRES_PER_KM * _BPS);
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
    function creditOf(address account, address token) external view returns (uint256) {
        return _credits[account][token];
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
        if (odometer < p.lastOdometer || harshBraking < p.lastHarsh || speeding < p.lastSpeeding) {
            revert EventRejected(policyId, 0, RejectReason.CounterRollback);
        }
        metres = odometer - p.lastOdometer;
        (factorBps, amount) = _premium(p, metres, uint256(harshBraking - p.lastHarsh) + (speeding - p.lastSpeeding));
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

    /// @dev Take `amount` of `token` from msg.sender; the balance must grow by exactly `amount` (fee-on-transfer and
    /// lying tokens are refused rather than leaving the books short).
    function _pullFunds(address token, uint256 amount) private {
        uint256 before = IERC20(token).balanceOf(address(this));
        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = IERC20(token).balanceOf(address(this)) - before;
        if (received != amount) revert WrongValue(amount, received);
    }
}
