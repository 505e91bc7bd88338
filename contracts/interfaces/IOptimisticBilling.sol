// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IMeteredBilling} from "./IMeteredBilling.sol";
import {IOptimisticBatches} from "./IOptimisticBatches.sol";

/// @title Metered billing settled optimistically: bonded batch commitments, fraud proofs, claims after a window.
/// @notice An agreement opened here is billed from the same device-signed `Reading(agreementId, seq, timestamp,
/// value)` as {IMeteredBilling}, priced with {IMeteredBilling}'s tariffs, but no signature is checked when readings
/// arrive: they come in batches of {IOptimisticBatches} (tree, window, bond, voids and claims are described there).
///
/// Batch data ({commit}'s `items`): `k` (uint16, ≥ 1) ‖ `base` (uint40) ‖ k agreement ids (32 bytes each) ‖ items
/// of 82 bytes: index into the table (uint16) ‖ seq (uint40) ‖ timestamp − base (uint24) ‖ value (uint64) ‖ r ‖ vs.
/// Each item stands for the reading (table[index], seq, base + offset, value) the device signed. {commit} reverts
/// with {MalformedBatch} for an empty or ragged batch and {BatchTooLarge} beyond {MAX_BATCH_READINGS}; an item whose
/// index is past the table, or whose timestamp passes 2^40, makes the data build no root ({challengeData}).
///
/// A {challenge} or a {claim} carries one reading whole, packed as in {IMeteredBilling-settle} (114 bytes). A
/// challenge proves the reading breaks a settlement rule as of the commit: signature not of the device's key at
/// that time, key retired, timestamp beyond the commit time + MAX_CLOCK_SKEW, or (against the last reading claimed
/// before the commit) seq not above it, register below it, timestamp before it. A claim bills the register delta
/// since the agreement's last claimed reading, exactly as direct settlement would, and only moves forward (seq
/// above, register not below, timestamp not before the last claimed); it emits {ReadingClaimed} (and
/// {AgreementSuspended} when the deposit runs short).
interface IOptimisticBilling is IOptimisticBatches {
    event AgreementOffered(
        uint256 indexed agreementId,
        address indexed provider,
        address indexed consumer,
        address device,
        address token,
        uint32 tariffId,
        uint64 startValue,
        uint32 noticePeriod
    );
    event OfferCancelled(uint256 indexed agreementId, address by);
    event AgreementAccepted(uint256 indexed agreementId, uint256 deposit);
    event ToppedUp(uint256 indexed agreementId, address indexed from, uint256 amount, uint256 arrearsPaid);
    event AgreementSuspended(uint256 indexed agreementId, uint256 arrears);
    event AgreementResumed(uint256 indexed agreementId);
    event EarningsWithdrawn(uint256 indexed agreementId, address indexed provider, uint256 amount);
    event CloseRequested(uint256 indexed agreementId, uint64 closeAt);
    event AgreementClosed(uint256 indexed agreementId, uint256 refund);

    /// @notice A claimed reading moved the register; `amount` was billed from the prepaid balance.
    event ReadingClaimed(uint256 indexed agreementId, uint256 indexed batchId, uint64 seq, uint256 amount);

    error MalformedBatch(uint256 length);
    error UnknownTariff(uint32 tariffId);
    error UnknownAgreement(uint256 agreementId);
    error NotProvider(uint256 agreementId, address caller);
    error NotConsumer(uint256 agreementId, address caller);
    error WrongStatus(uint256 agreementId, IMeteredBilling.AgreementStatus status);
    error NoEarnings(uint256 agreementId);

    /// @notice Provider (msg.sender) offers `consumer` an optimistic agreement for a METER or VEHICLE `device`,
    /// priced with tariff `tariffId` of {tariffs}. Same terms as {IMeteredBilling-offer}; the id has
    /// {AGREEMENT_ID_FLAG} set. Emits {AgreementOffered}.
    function offer(
        address consumer,
        address device,
        uint32 tariffId,
        address token,
        uint64 startValue,
        uint32 noticePeriod
    ) external returns (uint256 agreementId);

    /// @notice Provider withdraws, or consumer declines, an offer not yet accepted. Emits an {OfferCancelled} event.
    function cancelOffer(uint256 agreementId) external;

    /// @notice As {IMeteredBilling-accept}. Emits an {AgreementAccepted} event.
    function accept(uint256 agreementId, uint256 deposit, uint64 startValue) external payable;

    /// @notice As {IMeteredBilling-topUp}. Emits {ToppedUp} (and {AgreementResumed}).
    function topUp(uint256 agreementId, uint256 amount) external payable;

    /// @notice As {IMeteredBilling-withdrawEarnings}. Emits an {EarningsWithdrawn} event.
    function withdrawEarnings(uint256 agreementId) external returns (uint256 amount);

    /// @notice As {IMeteredBilling-requestClose}. Emits a {CloseRequested} event.
    function requestClose(uint256 agreementId) external;

    /// @notice Consumer closes strictly after `closeAt` + {closeDelay}: a reading signed by `closeAt` and relayed
    /// within SETTLEMENT_GRACE still has its window and a grace to be claimed. Emits an {AgreementClosed} event.
    function close(uint256 agreementId) external returns (uint256 refund);

    function agreementOf(uint256 agreementId) external view returns (IMeteredBilling.Agreement memory);

    function earningsOf(uint256 agreementId) external view returns (uint256);

    /// @notice The {IMeteredBilling} whose tariffs price the agreements.
    function tariffs() external view returns (address);

    /// @notice The EIP-712 digest a meter signs for a Reading on this contract.
    function hashReading(uint256 agreementId, uint64 seq, uint64 timestamp, uint256 value)
        external
        view
        returns (bytes32);

    /// @notice Most readings in one batch: a data challenge of the largest batch fits in a block.
    function MAX_BATCH_READINGS() external view returns (uint256);

    /// @notice Bit 63, set in every agreement id minted here: `device << 96 | tariffId << 64 | AGREEMENT_ID_FLAG |
    /// count`. {IMeteredBilling} mints `device << 96 | tariffId << 64 | count` with a count of its own that never
    /// reaches it, so an agreement id names one agreement across both modes (and says which mode it is in).
    function AGREEMENT_ID_FLAG() external view returns (uint256);
}
