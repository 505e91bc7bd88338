// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IDeviceEvents} from "./IDeviceEvents.sol";
import {IMeteredBilling} from "./IMeteredBilling.sol";
import {IPullPayments} from "./IPullPayments.sol";

/// @title Metered billing settled optimistically: bonded batch commitments, fraud proofs, claims after a window.
/// @notice An agreement opened here is billed from the same device-signed `Reading(agreementId, seq, timestamp,
/// value)` as {IMeteredBilling}, priced with {IMeteredBilling}'s tariffs, but no signature is checked when readings
/// arrive. A relayer posts a batch (an agreement table and 82-byte readings, see {commit}) with a bond of {BOND};
/// the contract keeps the batch's Merkle root, the hash of its data, the relayer and the time. A {challenge} or a
/// {claim} carries one reading whole, packed as in {IMeteredBilling-settle} (114 bytes).
///
/// Tree: leaf = keccak256(digest ‖ r ‖ vs), `digest` the reading's EIP-712 digest under this contract's domain
/// (rebuilt from the fields) and r ‖ vs its compact signature; a level pairs nodes (0,1), (2,3), … with
/// OpenZeppelin's commutative keccak256 and carries an odd last node up unchanged. A proof is the sibling hashes from
/// the leaf up (OpenZeppelin MerkleProof).
///
/// For {CHALLENGE_WINDOW} after the commit anyone may void the batch by proving one leaf invalid ({challenge}) or
/// the data not to build the root ({challengeData}); half the bond is burnt and half paid to the challenger. After
/// the window anyone may
/// {claim} a leaf: it bills the register delta since the agreement's last claimed reading, exactly as direct
/// settlement would, and only moves forward (seq above, register not below, timestamp not before the last claimed).
interface IOptimisticBilling is IDeviceEvents, IPullPayments {
    enum BatchStatus {
        None,
        Committed,
        Voided,
        Released
    }

    struct Batch {
        bytes32 root;
        bytes32 dataHash;
        address relayer;
        uint40 committedAt;
        BatchStatus status;
    }

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

    /// @notice `relayer` bonded a batch of `count` readings (the call's `readings` argument).
    event BatchCommitted(
        uint256 indexed batchId, address indexed relayer, bytes32 root, bytes32 dataHash, uint256 count
    );
    /// @notice `challenger` proved the batch invalid and was paid `reward`; `burnt` went to {BURN_SINK}. `leaf` broke
    /// `reason`; leaf 0 with reason None: the batch's data does not build its root.
    event BatchVoided(
        uint256 indexed batchId,
        address indexed challenger,
        bytes32 leaf,
        RejectReason reason,
        uint256 reward,
        uint256 burnt
    );
    /// @notice The window passed unchallenged and the bond went back to the relayer.
    event BondReleased(uint256 indexed batchId, address indexed relayer, uint256 amount);
    /// @notice A claimed reading moved the register; `amount` was billed from the prepaid balance.
    event ReadingClaimed(uint256 indexed agreementId, uint256 indexed batchId, uint64 seq, uint256 amount);

    error MalformedBatch(uint256 length);
    error BatchTooLarge(uint256 count, uint256 max);
    error ChallengeWindowOutOfRange(uint256 window, uint256 min, uint256 max);
    error WrongBond(uint256 expected, uint256 received);
    error UnknownBatch(uint256 batchId);
    error BatchNotLive(uint256 batchId, BatchStatus status);
    /// @notice Challenges are possible until `endsAt` (inclusive), claims and the bond's release after it.
    error ChallengeWindowOpen(uint256 batchId, uint256 endsAt);
    error ChallengeWindowClosed(uint256 batchId, uint256 endsAt);
    error NotInBatch(uint256 batchId, bytes32 leaf);
    /// @notice The challenged leaf (or the batch data) is valid: the challenge proved nothing.
    error NothingProven(uint256 batchId, bytes32 leaf);
    error NotBatchData(uint256 batchId, bytes32 dataHash);
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

    /// @notice Relayer bonds {BOND} (msg.value) on a batch: `root` of the tree over `readings`, laid out as
    /// `k` (uint16, ≥ 1) ‖ `base` (uint40) ‖ k agreement ids (32 bytes each) ‖ items of 82 bytes: index into the
    /// table (uint16) ‖ seq (uint40) ‖ timestamp − base (uint24) ‖ value (uint64) ‖ r ‖ vs. Each item stands for the
    /// reading (table[index], seq, base + offset, value) the device signed. Reverts with {MalformedBatch} for an
    /// empty or ragged batch and {BatchTooLarge} beyond {MAX_BATCH_READINGS} (a data challenge must fit in a block).
    /// An item whose index is past the table, or whose timestamp passes 2^40, makes the data build no root
    /// ({challengeData}). Emits a {BatchCommitted} event.
    function commit(bytes32 root, bytes calldata readings) external payable returns (uint256 batchId);

    /// @notice Anyone, during the window: prove `reading` (114 packed bytes, in the batch by `proof`) breaks a
    /// settlement rule as of the commit — signature not of the device's key at that time, key retired, timestamp
    /// beyond the commit time + MAX_CLOCK_SKEW, or (against the last reading claimed before the commit) seq not
    /// above it, register below it, timestamp before it. Voids the batch, burns half the bond and pays the rest to
    /// the caller; reverts with {NothingProven} for a valid leaf. Emits a {BatchVoided} event.
    function challenge(uint256 batchId, bytes calldata reading, bytes32[] calldata proof) external;

    /// @notice Anyone, during the window: show that `readings` (the commit's data, by its hash) do not build the
    /// batch's root. Voids the batch, burns half the bond and pays the rest to the caller. Emits a {BatchVoided}
    /// event.
    function challengeData(uint256 batchId, bytes calldata readings) external;

    /// @notice Anyone, after the window, on a batch not voided: bill `reading` (in the batch by `proof`) like a
    /// direct settlement. Reverts with {EventRejected} when it would not move the agreement forward. Emits a
    /// {ReadingClaimed} event (and {AgreementSuspended} when the deposit runs short).
    function claim(uint256 batchId, bytes calldata reading, bytes32[] calldata proof) external;

    /// @notice Anyone, after the window of a batch not voided: pay the bond back to its relayer (pushed, or
    /// credited for {withdraw}). Emits a {BondReleased} event.
    function releaseBond(uint256 batchId) external;

    /// @notice As {IMeteredBilling-withdrawEarnings}. Emits an {EarningsWithdrawn} event.
    function withdrawEarnings(uint256 agreementId) external returns (uint256 amount);

    /// @notice As {IMeteredBilling-requestClose}. Emits a {CloseRequested} event.
    function requestClose(uint256 agreementId) external;

    /// @notice Consumer closes strictly after `closeAt` + {closeDelay}: a reading signed by `closeAt` and relayed
    /// within SETTLEMENT_GRACE still has its window and a grace to be claimed. Emits an {AgreementClosed} event.
    function close(uint256 agreementId) external returns (uint256 refund);

    function agreementOf(uint256 agreementId) external view returns (IMeteredBilling.Agreement memory);

    function batchOf(uint256 batchId) external view returns (Batch memory);

    function earningsOf(uint256 agreementId) external view returns (uint256);

    /// @notice The {IMeteredBilling} whose tariffs price the agreements.
    function tariffs() external view returns (address);

    /// @notice The EIP-712 digest a meter signs for a Reading on this contract.
    function hashReading(uint256 agreementId, uint64 seq, uint64 timestamp, uint256 value)
        external
        view
        returns (bytes32);

    /// @notice The Merkle leaf of a packed reading.
    function leafOf(bytes calldata reading) external view returns (bytes32);

    /// @notice Seconds after a commit during which it can be challenged (set at deployment).
    function CHALLENGE_WINDOW() external view returns (uint64);

    /// @notice The bond (wei) a relayer posts with each batch (set at deployment).
    function BOND() external view returns (uint256);

    /// @notice Most readings in one batch: a data challenge of the largest batch fits in a block.
    function MAX_BATCH_READINGS() external view returns (uint256);

    /// @notice Where the burnt half of a voided batch's bond goes (an address nobody holds the key of).
    function BURN_SINK() external view returns (address);

    /// @notice Bit 63, set in every agreement id minted here: `device << 96 | tariffId << 64 | AGREEMENT_ID_FLAG |
    /// count`. {IMeteredBilling} mints `device << 96 | tariffId << 64 | count` with a count of its own that never
    /// reaches it, so an agreement id names one agreement across both modes (and says which mode it is in).
    function AGREEMENT_ID_FLAG() external view returns (uint256);
}
