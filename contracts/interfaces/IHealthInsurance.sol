// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IDeviceEvents} from "./IDeviceEvents.sol";
import {IPullPayments} from "./IPullPayments.sol";

/// @title Health cover priced by a wearable's signed activity tier.
/// @notice A policy runs `periods` periods of `periodLength` seconds from its acceptance. The WEARABLE device named
/// in the policy id computes, on the device, the activity tier (0–3) of each finished period from its step count
/// and active minutes against the thresholds of the policy, and signs only `ActivitySummary(policyId, seq,
/// timestamp, period, tier)`: the raw data never leaves it. Every period is charged `baseRate` once it is over;
/// a summary of the period gives back the tier's discount `baseRate × discountBps[tier] / 10_000` (rounded down),
/// whenever it arrives — before or after the period was charged, before or after the policy closed (then as a pull
/// credit to the holder). A period counts its best summarised tier, once; so the premium is
/// `Σ over periods (baseRate − discount(best tier))`, the same for every subset, order and batching of the relayed
/// summaries once they are all relayed.
interface IHealthInsurance is IDeviceEvents, IPullPayments {
    enum PolicyStatus {
        None,
        Offered,
        Active,
        Cancelled,
        Closed
    }

    /// @notice What the insurer offers. Discounts grow with the tier (`discountBps[0] ≤ … ≤ discountBps[3] ≤
    /// 10_000`); tier t ≥ 1 needs at least `minSteps[t-1]` steps and `minActiveMinutes[t-1]` active minutes in a
    /// period (non-decreasing with t). The thresholds are on chain for the device and the holder to read: the
    /// contract never sees the data they apply to.
    struct Terms {
        uint128 baseRate;
        uint32 periodLength;
        uint32 periods;
        uint16[4] discountBps;
        uint32[3] minSteps;
        uint16[3] minActiveMinutes;
    }

    /// @notice A policy as {policyOf} reports it; the money figures are derived at the time of the call.
    struct Policy {
        address insurer;
        address holder;
        address wearable;
        address token;
        PolicyStatus status;
        uint64 start; // acceptance time: period k covers [start + k·periodLength, start + (k+1)·periodLength)
        Terms terms;
        uint32[4] tierCounts; // summarised periods by best tier
        uint32 duePeriods; // periods over (charged the base rate, less their discounts)
        uint256 premium; // Σ over due periods (baseRate − discount of its best summary)
        uint256 deposited;
        uint256 prepaid; // deposited − premium while running (0 once closed)
        uint256 arrears; // premium − deposited when positive
        uint256 refunded; // paid or credited back to the holder once closed (late discounts included)
        uint256 withdrawn; // taken by the insurer
        uint256 earnings; // what the insurer can withdraw now: the part of the premium no summary can take back
    }

    /// @notice The signed summary the unpacked views take (the batch call takes them packed, see {settle}).
    struct SignedSummary {
        uint256 policyId;
        uint64 seq;
        uint64 timestamp;
        uint32 period;
        uint8 tier;
        bytes32 r;
        bytes32 vs;
    }

    event PolicyOffered(
        uint256 indexed policyId,
        address indexed insurer,
        address indexed holder,
        address wearable,
        address token,
        Terms terms
    );
    event PolicyCancelled(uint256 indexed policyId);
    event PolicyAccepted(uint256 indexed policyId, uint256 deposit, uint64 start);
    event PolicyToppedUp(uint256 indexed policyId, address indexed from, uint256 amount);
    /// @notice A summary set the best tier of `period` to `tier` (`previousTier` 255: the period had none).
    event SummarySettled(uint256 indexed policyId, uint64 seq, uint32 period, uint8 tier, uint8 previousTier);
    event SummaryRejected(uint256 indexed policyId, uint64 seq, RejectReason reason);
    event PolicyClosed(uint256 indexed policyId, uint256 refund);
    /// @notice A summary settled after close gave `amount` back to the holder as a pull credit.
    event LateDiscountCredited(uint256 indexed policyId, uint256 amount);
    event EarningsWithdrawn(uint256 indexed policyId, address indexed insurer, uint256 amount);

    error ZeroRate();
    error InvalidPeriods(uint32 periodLength, uint32 periods);
    error InvalidDiscounts(uint16[4] discountBps);
    error InvalidThresholds(uint32[3] minSteps, uint16[3] minActiveMinutes);
    error UnknownPolicy(uint256 policyId);
    error NotHolder(uint256 policyId, address caller);
    error NotInsurer(uint256 policyId, address caller);
    error WrongStatus(uint256 policyId, PolicyStatus status);
    error NoEarnings(uint256 policyId);
    error MalformedBatch(uint256 length);

    /// @notice Offer cover for the holder's WEARABLE device, paid in ERC-20 `token`; the caller is the insurer.
    /// @dev Emits a {PolicyOffered} event.
    /// @return policyId the wearable's address in the top 160 bits and a counter below.
    function offer(address holder, address wearable, address token, Terms calldata terms)
        external
        returns (uint256 policyId);

    /// @notice Withdraw an offer not yet accepted (insurer or holder). Emits a {PolicyCancelled} event.
    function cancelOffer(uint256 policyId) external;

    /// @notice Accept the offer with a prepaid `deposit` (holder): period 0 starts now. Emits {PolicyAccepted}.
    function accept(uint256 policyId, uint256 deposit) external;

    /// @notice Add `amount` to an active policy's deposit (anyone). Emits a {PolicyToppedUp} event.
    function topUp(uint256 policyId, uint256 amount) external;

    /// @notice Settle packed summaries; each item is `policyId 32 | seq 8 | timestamp 8 | period 4 | tier 1 | r 32 |
    /// vs 32` (117 bytes, big-endian, ERC-2098 signature). Bad items are skipped with {SummaryRejected}; anyone may
    /// relay. Emits a {SummarySettled} event per settled item (and {LateDiscountCredited} after close).
    /// @return settled how many summaries changed a period's tier.
    function settle(bytes calldata summaries) external returns (uint256 settled);

    /// @notice End a policy whose last period is over (anyone): the unused deposit goes back to the holder (a
    /// bounded push, a pull credit if it fails). Emits a {PolicyClosed} event.
    function close(uint256 policyId) external returns (uint256 refund);

    /// @notice Send the insurer the premium no later summary can take back. Emits an {EarningsWithdrawn} event.
    function withdrawEarnings(uint256 policyId) external returns (uint256 amount);

    /// @notice The policy with its derived money figures now.
    function policyOf(uint256 policyId) external view returns (Policy memory);

    /// @notice Whether `period` has a settled summary, and its best tier.
    function tierOf(uint256 policyId, uint32 period) external view returns (bool summarised, uint8 tier);

    /// @notice The EIP-712 digest a wearable signs.
    function hashActivitySummary(uint256 policyId, uint64 seq, uint64 timestamp, uint32 period, uint8 tier)
        external
        view
        returns (bytes32);
}
