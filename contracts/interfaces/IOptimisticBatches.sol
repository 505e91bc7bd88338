// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IDeviceEvents} from "./IDeviceEvents.sol";
import {IPullPayments} from "./IPullPayments.sol";

/// @title Bonded batch commitments of device-signed events, fraud proofs during a window, claims after it.
/// @notice The mechanics every optimistic product shares ({OptimisticBatches}); a product defines its items (the
/// batch data's layout, the item a challenge or a claim carries whole, the leaf, the rules a challenge can prove
/// broken and what a claim settles). A relayer posts a batch with a bond of {BOND}; the contract keeps the batch's
/// Merkle root, the hash of its data, the relayer and the time, so anyone can rebuild the tree from the call's
/// data alone.
///
/// Tree: leaf = keccak256(digest ‖ r ‖ vs), `digest` the event's EIP-712 digest under the product's domain (rebuilt
/// from the fields) and r ‖ vs its compact signature; a level pairs nodes (0,1), (2,3), … with OpenZeppelin's
/// commutative keccak256 and carries an odd last node up unchanged. A proof is the sibling hashes from the leaf up
/// (OpenZeppelin MerkleProof).
///
/// For {CHALLENGE_WINDOW} after the commit anyone may void the batch by proving one leaf invalid ({challenge}) or
/// the data not to build the root ({challengeData}); half the bond is burnt (to {BURN_SINK}) and half paid to the
/// challenger, so a relayer challenging its own bad batch still loses half. After the window anyone may {claim} a
/// leaf of a batch not voided, and the bond goes back to the relayer ({releaseBond}).
interface IOptimisticBatches is IDeviceEvents, IPullPayments {
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

    /// @notice `relayer` bonded a batch of `count` items (the call's data argument).
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

    /// @notice Relayer bonds {BOND} (msg.value) on a batch: `root` of the tree over `items` (the product's layout).
    /// Reverts for an empty, ragged or oversized batch ({BatchTooLarge}: a data challenge must fit in a block).
    /// Emits a {BatchCommitted} event.
    function commit(bytes32 root, bytes calldata items) external payable returns (uint256 batchId);

    /// @notice Anyone, during the window: prove `item` (packed as the product says, in the batch by `proof`) breaks
    /// a settlement rule as of the commit. Voids the batch, burns half the bond and pays the rest to the caller;
    /// reverts with {NothingProven} for a valid leaf. Emits a {BatchVoided} event.
    function challenge(uint256 batchId, bytes calldata item, bytes32[] calldata proof) external;

    /// @notice Anyone, during the window: show that `items` (the commit's data, by its hash) do not build the
    /// batch's root. Voids the batch, burns half the bond and pays the rest to the caller. Emits a {BatchVoided}
    /// event.
    function challengeData(uint256 batchId, bytes calldata items) external;

    /// @notice Anyone, after the window, on a batch not voided: settle `item` (in the batch by `proof`) as direct
    /// settlement would. Reverts with {EventRejected} when it would not move its target forward.
    function claim(uint256 batchId, bytes calldata item, bytes32[] calldata proof) external;

    /// @notice Anyone, after the window of a batch not voided: pay the bond back to its relayer (pushed, or
    /// credited for {withdraw}). Emits a {BondReleased} event.
    function releaseBond(uint256 batchId) external;

    function batchOf(uint256 batchId) external view returns (Batch memory);

    /// @notice The Merkle leaf of a packed item.
    function leafOf(bytes calldata item) external view returns (bytes32);

    /// @notice Seconds after a commit during which it can be challenged (set at deployment).
    function CHALLENGE_WINDOW() external view returns (uint64);

    /// @notice The bond (wei) a relayer posts with each batch (set at deployment).
    function BOND() external view returns (uint256);

    /// @notice Where the burnt half of a voided batch's bond goes (an address nobody holds the key of).
    function BURN_SINK() external view returns (address);
}
