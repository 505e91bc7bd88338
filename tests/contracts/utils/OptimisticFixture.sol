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

    uint64 internal constant WINDOW = 1 hours;
    uint256 internal constant BOND = 0.1 ether;

    OptimisticBilling internal opt;

    function setUp() public virtual override {
        super.setUp();
        opt = new OptimisticBilling(registry, billing, WINDOW, BOND);
        vm.deal(relayer, 1_000 ether);
    }

    /// @dev A reading signed for OptimisticBilling, packed whole as a claim or challenge carries it (114 bytes).
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

    function leaves(bytes[] memory items) internal view returns (bytes32[] memory ls) {
        ls = new bytes32[](items.length);
        for (uint256 i = 0; i < items.length; ++i) {
            ls[i] = leafOf(items[i]);
        }
    }

    /// @dev The leaf computed here, without calling the contract (so it can sit between expectRevert and a call),
    /// from the EIP-712 domain the contract documents: keccak256(digest ‖ r ‖ vs).
    function leafOf(bytes memory item) internal view returns (bytes32) {
        (uint256 id, uint256 seq, uint256 timestamp, uint256 value) = fieldsOf(item);
        bytes32 structHash = keccak256(abi.encode(READING_TYPEHASH, id, seq, timestamp, value));
        bytes32 digest = digestUnder("iotsettle", "1", block.chainid, address(opt), structHash);
        bytes32 r;
        bytes32 vs;
        assembly ("memory-safe") {
            r := mload(add(item, 82))
            vs := mload(add(item, 114))
        }
        return keccak256(abi.encodePacked(digest, r, vs));
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

    /// @dev The data `commit` takes for `items` (114-byte readings): agreement table and 84-byte items.
    function pack(bytes[] memory items) internal pure returns (bytes memory) {
        return BatchTree.pack(items);
    }

    /// @dev Commit `items` as one honest batch (root built from the items) by `relayer`.
    function commitItems(bytes[] memory items) internal returns (uint256 batchId) {
        uint256 bond = opt.BOND();
        vm.prank(relayer);
        batchId = opt.commit{value: bond}(rootOf(leaves(items)), pack(items));
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
