// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {OptimisticBilling} from "../../../contracts/OptimisticBilling.sol";
import {IMeteredBilling} from "../../../contracts/interfaces/IMeteredBilling.sol";
import {BatchTree} from "./BatchTree.sol";
import {Fixture} from "./Fixture.sol";

/// @dev OptimisticBilling beside the direct contracts, with readings signed for it and the batch tree of
/// IOptimisticBilling (commutative pairs, odd last node carried up).
abstract contract OptimisticFixture is Fixture {
    bytes32 internal constant READING_TYPEHASH =
        keccak256("Reading(uint256 agreementId,uint64 seq,uint64 timestamp,uint256 value)");

    OptimisticBilling internal opt;

    function setUp() public virtual override {
        super.setUp();
        opt = new OptimisticBilling(registry, billing);
        vm.deal(relayer, 1_000 ether);
    }

    /// @dev A reading signed for OptimisticBilling, packed (114 bytes).
    function signItem(uint256 key, uint256 agreementId, uint64 seq, uint64 timestamp, uint64 value)
        internal
        view
        returns (bytes memory)
    {
        (bytes32 r, bytes32 vs) = vm.signCompact(key, opt.hashReading(agreementId, seq, timestamp, value));
        return abi.encodePacked(agreementId, uint40(seq), uint40(timestamp), value, r, vs);
    }

    function openOptimistic(address device, uint32 tariffId, uint64 startValue, uint256 deposit)
        internal
        returns (uint256 id)
    {
        vm.prank(provider);
        id = opt.offer(consumer, device, tariffId, address(token), startValue, 1 days);
        token.mint(consumer, deposit);
        vm.startPrank(consumer);
        token.approve(address(opt), deposit);
        opt.accept(id, deposit, startValue);
        vm.stopPrank();
    }

    // ---------------------------------------------------------------- batches

    /// @dev One allocation (repeated bytes.concat would copy the batch once per item).
    function concat(bytes[] memory items) internal pure returns (bytes memory out) {
        uint256 total;
        for (uint256 i = 0; i < items.length; ++i) {
            total += items[i].length;
        }
        out = new bytes(total);
        uint256 at;
        for (uint256 i = 0; i < items.length; ++i) {
            bytes memory item = items[i];
            for (uint256 j = 0; j < item.length; ++j) {
                out[at++] = item[j];
            }
        }
    }

    function leaves(bytes[] memory items) internal view returns (bytes32[] memory ls) {
        ls = new bytes32[](items.length);
        for (uint256 i = 0; i < items.length; ++i) {
            ls[i] = leafOf(items[i]);
        }
    }

    /// @dev The leaf computed here, without calling the contract (so it can sit between expectRevert and a call),
    /// from the EIP-712 domain the contract documents: keccak256(digest ‖ item).
    function leafOf(bytes memory item) internal view returns (bytes32) {
        (uint256 id, uint256 seq, uint256 timestamp, uint256 value) = fieldsOf(item);
        bytes32 structHash = keccak256(abi.encode(READING_TYPEHASH, id, seq, timestamp, value));
        bytes32 digest = digestUnder("iotsettle", "1", block.chainid, address(opt), structHash);
        return keccak256(bytes.concat(digest, item));
    }

    function fieldsOf(bytes memory item)
        internal
        pure
        returns (uint256 id, uint256 seq, uint256 timestamp, uint256 value)
    {
        uint256 fields;
        assembly ("memory-safe") {
            id := mload(add(item, 0x20))
            fields := mload(add(item, 0x40))
        }
        seq = fields >> 216;
        timestamp = uint40(fields >> 176);
        value = uint64(fields >> 112);
    }

    function rootOf(bytes32[] memory ls) internal pure returns (bytes32) {
        return BatchTree.root(ls);
    }

    function proofOf(bytes32[] memory ls, uint256 index) internal pure returns (bytes32[] memory) {
        return BatchTree.proof(ls, index);
    }

    /// @dev Commit `items` as one honest batch (root built from the items) by `relayer`.
    function commitItems(bytes[] memory items) internal returns (uint256 batchId) {
        uint256 bond = opt.BOND();
        vm.prank(relayer);
        batchId = opt.commit{value: bond}(rootOf(leaves(items)), concat(items));
    }

    function claimItem(uint256 batchId, bytes[] memory items, uint256 index) internal {
        opt.claim(batchId, items[index], proofOf(leaves(items), index));
    }

    function afterWindow(uint256 batchId) internal {
        vm.warp(uint256(opt.batchOf(batchId).committedAt) + opt.CHALLENGE_WINDOW() + 1);
    }

    function one(bytes memory item) internal pure returns (bytes[] memory items) {
        items = new bytes[](1);
        items[0] = item;
    }

    function two(bytes memory a, bytes memory b) internal pure returns (bytes[] memory items) {
        items = new bytes[](2);
        items[0] = a;
        items[1] = b;
    }

    function three(bytes memory a, bytes memory b, bytes memory c) internal pure returns (bytes[] memory items) {
        items = new bytes[](3);
        items[0] = a;
        items[1] = b;
        items[2] = c;
    }

    function tieredTariff() internal returns (uint32) {
        IMeteredBilling.TariffBlock[] memory blocks = new IMeteredBilling.TariffBlock[](2);
        blocks[0] = IMeteredBilling.TariffBlock(100, 3);
        blocks[1] = IMeteredBilling.TariffBlock(0, 5);
        return billing.createTariff(blocks);
    }
}
