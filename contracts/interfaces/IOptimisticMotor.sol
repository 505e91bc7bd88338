// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IMotorInsurance} from "./IMotorInsurance.sol";
import {IOptimisticBatches} from "./IOptimisticBatches.sol";

/// @title Pay-per-km motor insurance settled optimistically: bonded batches of reports, fraud proofs, claims.
/// @notice A policy opened here has the life cycle, pricing, money and views of {IMotorInsurance} and is priced from
/// the same device-signed `Telematics(policyId, seq, timestamp, odometer, harshBraking, speeding)`, but no signature
/// is checked when reports arrive: they come in the batches of {IOptimisticBatches}, and {IMotorInsurance-settle}
/// refuses (every call reverts with {SettledByClaims}). The premium is a function of the totals, so the newest
/// report per policy claimed after a window settles the whole period, whatever else was committed.
///
/// Ids: `vehicle << 96 | POLICY_ID_FLAG | count`. MotorInsurance mints `vehicle << 96 | count` with a count of its own
/// that never reaches bit 63, so a policy id names one policy across both modes and says which contract holds it
/// (and which contract's EIP-712 domain its vehicle signs for).
///
/// Batch data ({IOptimisticBatches-commit}'s `items`): `k` (uint16, ≥ 1) ‖ `base` (uint40) ‖ k policy ids (32 bytes
/// each) ‖ items of {BATCH_ITEM_SIZE} = 90 bytes: index into the table (uint16) ‖ seq (uint40) ‖ timestamp − base
/// (uint24) ‖ odometer (uint64) ‖ harshBraking (uint32) ‖ speeding (uint32) ‖ r ‖ vs, each standing for the report
/// (table[index], seq, base + offset, odometer, harshBraking, speeding) the vehicle signed; at most
/// {MAX_BATCH_REPORTS}. A challenge or a claim carries one report packed as {IMotorInsurance-settle} takes it (174
/// bytes, the terms included: a claim prices with them when they match the seal, as settle does).
///
/// A challenge proves, as of the batch's commit: no policy of this contract; a timestamp beyond the commit +
/// MAX_CLOCK_SKEW; against the last report claimed before the commit: seq not above it, a register below it, a
/// timestamp before it; a signature not of the vehicle's key then. A claim after the window charges the report as
/// {IMotorInsurance-settle} would (its checks but the signature's), emits {IMotorInsurance-PremiumCharged} and
/// {ReportClaimed}, and only moves forward. A policy closes strictly after closeAt + {closeDelay}: the grace, the
/// window of a batch committed at its end and a grace to claim it.
interface IOptimisticMotor is IMotorInsurance, IOptimisticBatches {
    /// @notice A report of `batchId` was claimed for the policy (its {IMotorInsurance-PremiumCharged} comes first).
    event ReportClaimed(uint256 indexed policyId, uint256 indexed batchId, uint64 seq);

    /// @notice Reports of optimistic policies settle through batches and claims, never through `settle`.
    error SettledByClaims();

    /// @notice Bit 63, set in every policy id minted here.
    function POLICY_ID_FLAG() external view returns (uint256);

    /// @notice Most reports in one batch: a data challenge of the largest batch fits in a block.
    function MAX_BATCH_REPORTS() external view returns (uint256);

    /// @notice Bytes per report in a batch's data, after its header and policy table.
    function BATCH_ITEM_SIZE() external view returns (uint256);
}
