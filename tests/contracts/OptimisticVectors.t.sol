// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

import {IOptimisticBilling} from "../../contracts/interfaces/IOptimisticBilling.sol";
import {IOptimisticBatches} from "../../contracts/interfaces/IOptimisticBatches.sol";
import {OptimisticFixture} from "./utils/OptimisticFixture.sol";

/// @dev The shared batch vectors (tests/vectors/optimistic-batch.json, written from oracle/protocol/batch_tree.py and
/// checked from Python by tests/protocol/test_batch_tree.py): the contract computes the same leaves, accepts the same
/// proofs and rebuilds the same root from the same data.
contract OptimisticVectorsTest is OptimisticFixture {
    string internal constant PATH = "tests/vectors/optimistic-batch.json";

    function test_Vectors_ContractAgreesWithPython() public {
        string memory json = vm.readFile(PATH);
        vm.chainId(vm.parseJsonUint(json, ".domain.chainId"));
        address target = vm.parseJsonAddress(json, ".domain.verifyingContract");
        vm.etch(target, address(opt).code);
        IOptimisticBilling copy = IOptimisticBilling(target);

        assertEq(opt.AGREEMENT_ID_FLAG(), vm.parseJsonUint(json, ".agreementIdFlag"), "the same id flag");

        uint256 count = vm.parseJsonUint(json, ".count");
        assertGt(count, 4, "several batch sizes");
        uint256 bond = opt.BOND();
        for (uint256 b = 0; b < count; ++b) {
            string memory base = string.concat(".batches[", vm.toString(b), "]");
            bytes memory data = vm.parseJsonBytes(json, string.concat(base, ".data"));
            bytes32[] memory ls = vm.parseJsonBytes32Array(json, string.concat(base, ".leaves"));
            bytes32 root = vm.parseJsonBytes32(json, string.concat(base, ".root"));
            bytes[] memory readings = vm.parseJsonBytesArray(json, string.concat(base, ".readings"));
            assertEq(readings.length, ls.length);
            assertEq(keccak256(pack(readings)), keccak256(data), "the same batch data");
            for (uint256 i = 0; i < ls.length; ++i) {
                assertEq(copy.leafOf(readings[i]), ls[i], "the same leaf");
                bytes32[] memory proof = ls.length == 1
                    ? new bytes32[](0)
                    : vm.parseJsonBytes32Array(json, string.concat(base, ".proofs[", vm.toString(i), "]"));
                assertTrue(MerkleProof.verify(proof, root, ls[i]), "the same proof");
            }
            assertEq(rootOf(ls), root, "the test helper builds the same tree");

            vm.prank(relayer);
            uint256 batchId = copy.commit{value: bond}(root, data);
            // The contract rebuilds the tree from the data: the same root, so the data challenge proves nothing.
            vm.expectRevert(abi.encodeWithSelector(IOptimisticBatches.NothingProven.selector, batchId, bytes32(0)));
            copy.challengeData(batchId, data);
        }
    }
}
