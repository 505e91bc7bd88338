// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IDeviceEvents} from "./IDeviceEvents.sol";
import {IPullPayments} from "./IPullPayments.sol";

/// @title Usage-based motor insurance: a per-km premium from a vehicle's device-signed odometer, moved within fixed
/// bounds by a behaviour factor from signed counts of harsh braking and speeding.
/// @notice Policy ids are minted as `uint160(vehicle) << 96 | serial`, so `settle` knows the vehicle of a policy
/// without a storage read. Treat them as opaque uint256.
///
/// The premium is priced on the totals since the offer (all three registers are cumulative; the offer fixes
/// `startOdometer`, `startHarsh` and `startSpeeding`):
///
///     M = odometer − startOdometer;   E = (harshBraking − startHarsh) + (speeding − startSpeeding)
///     F(M, E) = ratePerKm × min(M × minFactorBps + E × stepBps × 100_000, M × maxFactorBps) / 10_000_000
///
/// A settled report charges floor(F(its totals)) − floor(F(the totals of the last settled report)). F never goes
/// down when M or E grow, so no charge is negative, and the premiums of a policy add up to floor(F) of the newest
/// settled report's totals, whichever of the earlier reports were relayed and in how many batches: relayers choose
/// nothing. The factor reported with a charge is the one of the totals:
///
///     M == 0:     factorBps = E × stepBps == 0 ? minFactorBps : maxFactorBps
///     otherwise:  factorBps = min(minFactorBps + E × stepBps × 100_000 / M, maxFactorBps)   (rounded down)
///
/// `ratePerKm` is in token base units per km at factor 1.0 (10_000 bps). A driver without harsh events pays
/// `minFactorBps`; every event per 100 km adds `stepBps`, capped at `maxFactorBps`.
///
/// Ending: after {requestClose}, reports signed up to `closeAt` keep settling until {close}, which is possible
/// strictly after `closeAt + SETTLEMENT_GRACE`; a report signed after `closeAt` is refused with AfterEnd. So a
/// holder who closes first, or a relayer who withholds during the notice, only delays what the driving costs.
interface IMotorInsurance is IDeviceEvents, IPullPayments {
    /// @notice Offered → Active ⇄ Lapsed → Closed; Offered → Cancelled.
    /// Lapsed: the prepaid balance ran out, the shortfall is recorded as arrears and reports are refused with
    /// {RejectReason.Suspended} until a top-up pays the arrears.
    enum PolicyStatus {
        None,
        Offered,
        Active,
        Lapsed,
        Closed,
        Cancelled
    }

    /// @notice Everything about a policy. `charged` = premiums earned by the insurer so far (taken from the prepaid
    /// balance or paid as arrears); `charged + prepaid + refunded == deposited` always. `startHarsh` and
    /// `startSpeeding` (the unit's counters at the offer) come last so that earlier fields keep their positions.
    struct Policy {
        address insurer;
        address holder;
        address vehicle;
        address token;
        uint128 ratePerKm;
        uint16 minFactorBps;
        uint16 maxFactorBps;
        uint16 stepBps;
        PolicyStatus status;
        uint32 noticePeriod;
        uint64 closeAt;
        uint64 startOdometer;
        uint64 lastOdometer;
        uint32 lastHarsh;
        uint32 lastSpeeding;
        uint64 lastSeq;
        uint64 lastTimestamp;
        uint16 lastFactorBps;
        uint256 prepaid;
        uint256 arrears;
        uint256 charged;
        uint256 withdrawn;
        uint256 deposited;
        uint256 refunded;
        uint32 startHarsh;
        uint32 startSpeeding;
    }

    /// @notice A vehicle's `Telematics(policyId, seq, timestamp, odometer, harshBraking, speeding)` with its signature
    /// in the ERC-2098 compact form (`vs` = s with the top bit set when v is 28).
    /// {settle} takes these packed (128 bytes each); the struct is the report as signed and relayed.
    struct SignedTelematics {
        uint256 policyId;
        uint64 seq;
        uint64 timestamp;
        uint64 odometer;
        uint32 harshBraking;
        uint32 speeding;
        bytes32 r;
        bytes32 vs;
    }

    /// @notice The terms of a new offer. `startHarsh` and `startSpeeding` (the unit's behaviour counters at the
    /// offer, like `startOdometer`) come last so that decoders reading the earlier words by position keep working.
    event PolicyOffered(
        uint256 indexed policyId,
        address indexed insurer,
        address indexed holder,
        address vehicle,
        address token,
        uint128 ratePerKm,
        uint16 minFactorBps,
        uint16 maxFactorBps,
        uint16 stepBps,
        uint64 startOdometer,
        uint32 noticePeriod,
        uint32 startHarsh,
        uint32 startSpeeding
    );
    event PolicyCancelled(uint256 indexed policyId);
    event PolicyAccepted(uint256 indexed policyId, uint256 deposit);
    /// @notice `amount` arrived from `from`; `arrearsPaid` of it settled arrears (earned by the insurer at once).
    event PolicyToppedUp(uint256 indexed policyId, address indexed from, uint256 amount, uint256 arrearsPaid);
    /// @notice One report was settled: the holder reads why the rate changed. `record` packs, from the high bits:
    /// `seq` 192..255 | `metres` 128..191 | `harshBraking` 96..127 | `speeding` 64..95 | `factorBps` 48..63 (low 48
    /// bits zero). `metres`, `harshBraking` and `speeding` are the deltas since the previous settled report;
    /// `factorBps` is the behaviour factor of the totals since the offer (the one the premium so far is priced at)
    /// and `amount` the premium of the period: how much floor(F) of the totals grew (the part the prepaid balance
    /// could not cover became arrears). Two data words instead of six: the event is paid for by every report.
    event PremiumCharged(uint256 indexed policyId, uint256 record, uint256 amount);
    /// @notice A batch item was skipped; nothing changed for it.
    event TelematicsRejected(uint256 indexed policyId, uint64 seq, RejectReason reason);
    /// @notice The prepaid balance ran out; `arrears` is the total now owed. Reports are refused until a top-up.
    event PolicyLapsed(uint256 indexed policyId, uint256 arrears);
    event PolicyReinstated(uint256 indexed policyId);
    event CloseRequested(uint256 indexed policyId, uint64 closeAt);
    /// @notice The policy ended; `refund` (the unused prepaid balance) went to the holder, or became the holder's
    /// pull credit ({IPullPayments.Credited}, then {withdraw}) if the bounded push failed.
    event PolicyClosed(uint256 indexed policyId, uint256 refund);
    /// @notice The insurer took `amount` of the premiums earned on the policy.
    event EarningsWithdrawn(uint256 indexed policyId, address indexed insurer, uint256 amount);

    error ZeroRate();
    error InvalidFactorBounds(uint16 minFactorBps, uint16 maxFactorBps);
    error UnknownPolicy(uint256 policyId);
    error NotInsurer(uint256 policyId, address caller);
    error NotHolder(uint256 policyId, address caller);
    error WrongStatus(uint256 policyId, PolicyStatus status);
    /// @notice The acceptance named other starting registers than the offer's (`startOdometer`, `startHarsh`,
    /// `startSpeeding` are the policy's; the `accepted*` values the holder's).
    error StartRegistersMismatch(
        uint256 policyId,
        uint64 startOdometer,
        uint32 startHarsh,
        uint32 startSpeeding,
        uint64 acceptedOdometer,
        uint32 acceptedHarsh,
        uint32 acceptedSpeeding
    );
    /// @notice The insurer has no earned premium left to withdraw on the policy.
    error NoEarnings(uint256 id);
    /// @notice A packed {settle} batch whose length is not a multiple of 174 bytes.
    error MalformedBatch(uint256 length);

    /// @notice Insurer (msg.sender) offers `holder` a pay-per-km policy for a registered, active VEHICLE whose
    /// registers read `startOdometer` metres, `startHarsh` harsh-braking and `startSpeeding` speeding events now
    /// (the counters are cumulative since the unit was installed), paid in the ERC-20 `token`. The registers of the
    /// first report are charged from these values, and a report below any of them is refused with CounterRollback.
    /// The factor bounds are fixed for the policy's life: 0 < minFactorBps ≤ maxFactorBps ≤ MAX_FACTOR_BPS;
    /// ratePerKm > 0. Emits a {PolicyOffered} event.
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
    ) external returns (uint256 policyId);

    /// @notice Insurer withdraws, or holder declines, an offer not yet accepted. Emits a {PolicyCancelled} event.
    function cancelOffer(uint256 policyId) external;

    /// @notice Holder accepts and prepays `deposit` (> 0) of the policy token, naming the starting registers it
    /// agrees to be priced from (reverts with {StartRegistersMismatch} unless they are the offer's). Reports older
    /// than this block are refused. Emits a {PolicyAccepted} event.
    function accept(uint256 policyId, uint256 deposit, uint64 startOdometer, uint32 startHarsh, uint32 startSpeeding)
        external;

    /// @notice Anyone adds to the holder's prepaid balance; arrears are paid first and a Lapsed policy is reinstated
    /// once they reach 0. Emits a {PolicyToppedUp} event (and {PolicyReinstated}).
    function topUp(uint256 policyId, uint256 amount) external;

    /// @notice Holder or insurer starts the notice period: closeAt = now + noticePeriod. Reports signed up to
    /// closeAt keep settling until {close}; later ones are refused with AfterEnd. A second request keeps the first
    /// closeAt. Emits a {CloseRequested} event.
    function requestClose(uint256 policyId) external;

    /// @notice Anyone ends the policy strictly after closeAt + {closeDelay} (reverts with {TooEarly} until
    /// then: reports signed by closeAt may still arrive); the unused prepaid balance goes to the holder with a bounded push, or
    /// becomes the holder's credit for {withdraw} if the push fails. Arrears stay on record.
    /// Emits a {PolicyClosed} event.
    function close(uint256 policyId) external returns (uint256 refund);

    /// @notice Insurer takes the premiums earned and not yet withdrawn (charged − withdrawn); reverts with
    /// {NoEarnings} when there are none. Emits an {EarningsWithdrawn} event.
    function withdrawEarnings(uint256 policyId) external returns (uint256 amount);

    /// @notice Settle a batch of vehicle reports (permissionless), packed back to back, 174 bytes each: the signed
    /// fields in signing order at their signed widths, big-endian, then the compact signature, then the policy's
    /// terms: `policyId 32 | seq 8 | timestamp 8 | odometer 8 | harshBraking 4 | speeding 4 | r 32 | vs 32 |
    /// terms 46` (the fields of {SignedTelematics}; the signed EIP-712 message is the same; the terms as
    /// {telematicsTerms} returns them). Terms that do not match the policy's seal are read from storage instead (the
    /// same outcome at a higher gas cost): a relayer that does not know them sends 46 zero bytes. Reverts with
    /// {MalformedBatch} when the length is not a multiple of 174; bad items are skipped with a
    /// {TelematicsRejected} event. Emits {PremiumCharged} per settled report (and {PolicyLapsed}).
    /// @return settled how many reports were settled.
    function settle(bytes calldata reports) external returns (uint256 settled);

    function policyOf(uint256 policyId) external view returns (Policy memory);

    /// @notice The terms a relayer sends beside each report of the policy (46 bytes, big-endian): `ratePerKm 16 |
    /// closeAt 8 | startSpeeding 4 | startHarsh 4 | startOdometer 8 | stepBps 2 | maxFactorBps 2 | minFactorBps 2`.
    /// They change once, when a close is requested (closeAt). Reverts with {UnknownPolicy} for an unknown id.
    function telematicsTerms(uint256 policyId) external view returns (bytes memory);

    /// @notice The EIP-712 digest a vehicle signs for a Telematics report to this contract.
    function hashTelematics(
        uint256 policyId,
        uint64 seq,
        uint64 timestamp,
        uint64 odometer,
        uint32 harshBraking,
        uint32 speeding
    ) external view returns (bytes32);

    /// @notice Premium figures a report would produce now, by the formula above, without settling it: the metres
    /// since the last settled report, the factor of the totals and the charge. Reverts
    /// with {UnknownPolicy} for an unknown id and {EventRejected} (CounterRollback) for a register below the last.
    function quote(uint256 policyId, uint64 odometer, uint32 harshBraking, uint32 speeding)
        external
        view
        returns (uint64 metres, uint16 factorBps, uint256 amount);

    function TELEMATICS_TYPEHASH() external view returns (bytes32);

    /// @notice Seconds after closeAt before {close}: SETTLEMENT_GRACE here (an optimistic policy waits longer, see
    /// {IOptimisticMotor}).
    function closeDelay(uint256 policyId) external view returns (uint256);

    /// @notice Upper bound of maxFactorBps (5.0×).
    function MAX_FACTOR_BPS() external view returns (uint16);
}
