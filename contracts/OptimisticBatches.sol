// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {Hashes} from "@openzeppelin/contracts/utils/cryptography/Hashes.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

import {DeviceEventVerifier} from "./DeviceEventVerifier.sol";
import {IOptimisticBatches} from "./interfaces/IOptimisticBatches.sol";
import {PullPayments} from "./money/PullPayments.sol";

/// @title OptimisticBatches: the bond, the window, the tree, voids and claims every optimistic product shares.
/// @notice See {IOptimisticBatches}. A product supplies its items through five hooks: {_itemsIn} (the shape of a
/// batch's data, checked at commit), {_leaves} (the leaves the data stands for, for a data challenge), {_leafOfItem}
/// (the leaf of one item as a challenge or a claim carries it), {_fault} (the rule an item breaks as of the commit)
/// and {_claim} (what a claim settles). Everything else — who may do what and when, the bond's fate, the batch
/// records — is here, once, with the two helpers every product's items need: the batch shape of a table of
/// target ids followed by fixed-size items ({_tableItems}), and the signer rule judged as of the commit
/// ({_signerFaultAsOf}).
///
/// Bond: set per deployment ({BOND}, with the window {CHALLENGE_WINDOW}). A void burns half of it (sent to
/// {BURN_SINK}) and pays the other half to the challenger, so a relayer that challenges its own bad batch before a
/// watcher does still loses half its bond: lying is never free. Burnt rather than kept as a reserve: a reserve would
/// need someone to spend it, and these contracts have no owner.
abstract contract OptimisticBatches is IOptimisticBatches, DeviceEventVerifier, PullPayments {
    /// @notice Bounds of the per-deployment window: long enough for a watcher to get a challenge included, short
    /// enough that money is not held for ever (the window also delays every close).
    uint64 public constant MIN_CHALLENGE_WINDOW = 10 minutes;
    uint64 public constant MAX_CHALLENGE_WINDOW = 30 days;

    /// @inheritdoc IOptimisticBatches
    address public constant BURN_SINK = address(0xdEaD);

    /// @inheritdoc IOptimisticBatches
    uint64 public immutable CHALLENGE_WINDOW;

    /// @inheritdoc IOptimisticBatches
    uint256 public immutable BOND;

    /// @dev A batch's header: the number of targets in its table (uint16) and the base of its items' timestamps
    /// (uint40), then the table (32-byte ids), then the items.
    uint256 internal constant _BATCH_HEADER = 7;

    mapping(uint256 batchId => Batch) private _batches;
    uint64 private _batchCount;

    /// @dev `challengeWindow_` within [{MIN_CHALLENGE_WINDOW}, {MAX_CHALLENGE_WINDOW}], `bond_` > 0 (wei).
    constructor(uint64 challengeWindow_, uint256 bond_) {
        if (challengeWindow_ < MIN_CHALLENGE_WINDOW || challengeWindow_ > MAX_CHALLENGE_WINDOW) {
            revert ChallengeWindowOutOfRange(challengeWindow_, MIN_CHALLENGE_WINDOW, MAX_CHALLENGE_WINDOW);
        }
        if (bond_ == 0) revert ZeroAmount();
        CHALLENGE_WINDOW = challengeWindow_;
        BOND = bond_;
    }

    // ---------------------------------------------------------------- batches

    /// @inheritdoc IOptimisticBatches
    function commit(bytes32 root, bytes calldata items) external payable returns (uint256 batchId) {
        uint256 count = _itemsIn(items);
        if (msg.value != BOND) revert WrongBond(BOND, msg.value);
        bytes32 dataHash = keccak256(items);
        batchId = ++_batchCount;
        _batches[batchId] = Batch({
            root: root,
            dataHash: dataHash,
            relayer: msg.sender,
            committedAt: uint40(block.timestamp),
            status: BatchStatus.Committed
        });
        emit BatchCommitted(batchId, msg.sender, root, dataHash, count);
    }

    /// @inheritdoc IOptimisticBatches
    function challenge(uint256 batchId, bytes calldata item, bytes32[] calldata proof) external nonReentrant {
        Batch storage b = _liveBatch(batchId);
        _checkWindowOpen(batchId, b);
        bytes32 leaf = _leafOfItem(item);
        if (!MerkleProof.verifyCalldata(proof, b.root, leaf)) revert NotInBatch(batchId, leaf);
        RejectReason reason = _fault(item, b.committedAt);
        if (reason == RejectReason.None) revert NothingProven(batchId, leaf);
        _void(batchId, b, leaf, reason);
    }

    /// @inheritdoc IOptimisticBatches
    function challengeData(uint256 batchId, bytes calldata items) external nonReentrant {
        Batch storage b = _liveBatch(batchId);
        _checkWindowOpen(batchId, b);
        bytes32 dataHash = keccak256(items);
        if (dataHash != b.dataHash) revert NotBatchData(batchId, dataHash);
        (bool wellFormed, bytes32[] memory leaves) = _leaves(items);
        // slither-disable-next-line incorrect-equality (a hash comparison, not a balance)
        if (wellFormed && _rootOf(leaves) == b.root) revert NothingProven(batchId, bytes32(0));
        _void(batchId, b, bytes32(0), RejectReason.None);
    }

    /// @inheritdoc IOptimisticBatches
    function claim(uint256 batchId, bytes calldata item, bytes32[] calldata proof) external {
        Batch storage b = _liveBatch(batchId);
        _checkWindowOver(batchId, b);
        bytes32 leaf = _leafOfItem(item);
        if (!MerkleProof.verifyCalldata(proof, b.root, leaf)) revert NotInBatch(batchId, leaf);
        _claim(item, batchId);
    }

    /// @inheritdoc IOptimisticBatches
    function releaseBond(uint256 batchId) external nonReentrant {
        Batch storage b = _batches[batchId];
        BatchStatus status = b.status;
        if (status == BatchStatus.None) revert UnknownBatch(batchId);
        if (status != BatchStatus.Committed) revert BatchNotLive(batchId, status);
        _checkWindowOver(batchId, b);
        b.status = BatchStatus.Released;
        address relayer = b.relayer;
        emit BondReleased(batchId, relayer, BOND);
        _pay(address(0), relayer, BOND);
    }

    // ---------------------------------------------------------------- views

    /// @inheritdoc IOptimisticBatches
    function batchOf(uint256 batchId) external view returns (Batch memory) {
        return _batches[batchId];
    }

    /// @inheritdoc IOptimisticBatches
    function leafOf(bytes calldata item) external view returns (bytes32) {
        return _leafOfItem(item);
    }

    // ---------------------------------------------------------------- the product's items

    /// @dev The number of items in a batch's `data`; reverts for a malformed or oversized batch.
    function _itemsIn(bytes calldata data) internal view virtual returns (uint256 count);

    /// @dev The leaves `data` stands for, in order (its shape was checked at commit); not `wellFormed` when an item
    /// names nothing a claim or a challenge could carry.
    function _leaves(bytes calldata data) internal view virtual returns (bool wellFormed, bytes32[] memory leaves);

    /// @dev The leaf of one packed item as a challenge or a claim carries it; reverts when it is malformed.
    function _leafOfItem(bytes calldata item) internal view virtual returns (bytes32);

    /// @dev The settlement rule `item` breaks as of a commit at `committedAt`; None when it is valid.
    function _fault(bytes calldata item, uint256 committedAt) internal view virtual returns (RejectReason);

    /// @dev Settle `item` of `batchId`, whose window passed: as direct settlement would, forward only (reverts with
    /// EventRejected otherwise).
    function _claim(bytes calldata item, uint256 batchId) internal virtual;

    // ---------------------------------------------------------------- helpers for the products

    /// @dev The shape every product's batch data has: `k` (uint16, ≥ 1) ‖ `base` (uint40) ‖ k target ids (32
    /// bytes each) ‖ items of `itemSize` bytes, at most `maxItems`. Returns the number of items, not `wellShaped`
    /// for an empty or ragged batch (the product reverts with its own error); reverts with {BatchTooLarge} beyond
    /// `maxItems`.
    function _tableItems(bytes calldata data, uint256 itemSize, uint256 maxItems)
        internal
        pure
        returns (bool wellShaped, uint256 count)
    {
        uint256 len = data.length;
        if (len < _BATCH_HEADER) return (false, 0);
        uint256 table = _BATCH_HEADER + 32 * uint256(uint16(bytes2(data[0:2])));
        if (table == _BATCH_HEADER || len <= table || (len - table) % itemSize != 0) return (false, 0);
        count = (len - table) / itemSize;
        if (count > maxItems) revert BatchTooLarge(count, maxItems);
        return (true, count);
    }

    /// @dev The signer rule of a leaf judged as of its batch's commit. {_checkSigner} judges a key's retirement
    /// against now; a leaf is judged against its relay time, the commit: a key retired after the commit was current
    /// when the leaf was relayed (as direct settlement would have seen it, whatever the event's timestamp within the
    /// skew); one retired before counts for events dated by its retirement and relayed within one grace of it.
    function _signerFaultAsOf(
        bytes32 structHash,
        bytes32 r,
        bytes32 vs,
        address device,
        uint256 kindMask,
        uint256 timestamp,
        uint256 committedAt
    ) internal view returns (RejectReason reason) {
        reason = _checkSigner(structHash, r, vs, device, kindMask, uint64(timestamp));
        if (reason == RejectReason.KeyRotated || reason == RejectReason.DeviceRevoked) {
            address signer = ECDSA.recover(_hashTypedDataV4(structHash), r, vs);
            // slither-disable-next-line unused-return (only the retirement time is needed: the device, kind and status were checked above)
            (,,, uint64 retiredAt) = _REGISTRY.keyInfo(signer);
            if (
                retiredAt > committedAt
                    || (timestamp <= retiredAt && committedAt <= uint256(retiredAt) + SETTLEMENT_GRACE)
            ) {
                return RejectReason.None;
            }
        }
    }

    // ---------------------------------------------------------------- internals

    /// @dev keccak256(digest ‖ r ‖ vs): exactly what the device signed (the EIP-712 digest under the product's
    /// domain, rebuilt from the fields) and its signature.
    function _leafOf(bytes32 digest, bytes32 r, bytes32 vs) internal pure returns (bytes32 leaf) {
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, digest)
            mstore(add(ptr, 0x20), r)
            mstore(add(ptr, 0x40), vs)
            leaf := keccak256(ptr, 0x60)
        }
    }

    /// @dev The tree of {IOptimisticBatches} over `level` (overwritten): pairs (0,1), (2,3), … with OpenZeppelin's
    /// commutative keccak256, an odd last node carried up unchanged.
    function _rootOf(bytes32[] memory level) private pure returns (bytes32) {
        uint256 n = level.length;
        if (n == 0) return bytes32(0);
        while (n > 1) {
            uint256 half = (n + 1) / 2;
            for (uint256 i = 0; i < half; ++i) {
                uint256 left = 2 * i;
                level[i] = left + 1 < n ? Hashes.commutativeKeccak256(level[left], level[left + 1]) : level[left];
            }
            n = half;
        }
        return level[0];
    }

    /// @dev Effects, event, then half the bond burnt and the rest to the challenger, through the pull-payment ledger.
    function _void(uint256 batchId, Batch storage b, bytes32 leaf, RejectReason reason) private {
        b.status = BatchStatus.Voided;
        uint256 burnt = BOND / 2;
        emit BatchVoided(batchId, msg.sender, leaf, reason, BOND - burnt, burnt);
        _pay(address(0), BURN_SINK, burnt);
        _pay(address(0), msg.sender, BOND - burnt);
    }

    function _liveBatch(uint256 batchId) private view returns (Batch storage b) {
        b = _batches[batchId];
        BatchStatus status = b.status;
        if (status == BatchStatus.None) revert UnknownBatch(batchId);
        if (status == BatchStatus.Voided) revert BatchNotLive(batchId, status);
    }

    function _checkWindowOpen(uint256 batchId, Batch storage b) private view {
        uint256 endsAt = uint256(b.committedAt) + CHALLENGE_WINDOW;
        if (block.timestamp > endsAt) revert ChallengeWindowClosed(batchId, endsAt);
    }

    function _checkWindowOver(uint256 batchId, Batch storage b) private view {
        uint256 endsAt = uint256(b.committedAt) + CHALLENGE_WINDOW;
        if (block.timestamp <= endsAt) revert ChallengeWindowOpen(batchId, endsAt);
    }
}
