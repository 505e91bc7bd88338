// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IOptimisticBatches} from "../../contracts/interfaces/IOptimisticBatches.sol";
import {IOptimisticMotor} from "../../contracts/interfaces/IOptimisticMotor.sol";
import {OptimisticMotor} from "../../contracts/OptimisticMotor.sol";
import {BatchTree} from "./utils/BatchTree.sol";
import {MotorFixture} from "./utils/MotorFixture.sol";

/// @dev The telematics batches of tests/vectors/optimistic-batch.json (written from oracle/protocol/batch_tree.py):
/// OptimisticMotor computes the same leaves, the test helper packs the same data, and the contract rebuilds the same
/// root from it.
contract OptimisticMotorVectorsTest is MotorFixture {
    string internal constant PATH = "tests/vectors/optimistic-batch.json";

    function test_Vectors_ContractAgreesWithPython() public {
        OptimisticMotor om = new OptimisticMotor(registry, 1 hours, 0.1 ether);
        string memory json = vm.readFile(PATH);
        vm.chainId(vm.parseJsonUint(json, ".domain.chainId"));
        address target = vm.parseJsonAddress(json, ".domain.verifyingContract");
        vm.etch(target, address(om).code);
        IOptimisticMotor copy = IOptimisticMotor(target);
        assertEq(om.POLICY_ID_FLAG(), vm.parseJsonUint(json, ".agreementIdFlag"), "the same id flag");
        vm.deal(relayer, 100 ether);
        for (uint256 b = 0; b < 6; ++b) {
            string memory base = string.concat(".telematics[", vm.toString(b), "]");
            bytes memory data = vm.parseJsonBytes(json, string.concat(base, ".data"));
            bytes32[] memory ls = vm.parseJsonBytes32Array(json, string.concat(base, ".leaves"));
            bytes32 root = vm.parseJsonBytes32(json, string.concat(base, ".root"));
            bytes[] memory reports = vm.parseJsonBytesArray(json, string.concat(base, ".reports"));
            assertEq(keccak256(BatchTree.packReports(reports)), keccak256(data), "the same batch data");
            for (uint256 i = 0; i < ls.length; ++i) {
                assertEq(copy.leafOf(reports[i]), ls[i], "the same leaf");
            }
            assertEq(BatchTree.root(ls), root, "the same root");
            vm.prank(relayer);
            uint256 batchId = copy.commit{value: 0.1 ether}(root, data);
            vm.expectRevert(abi.encodeWithSelector(IOptimisticBatches.NothingProven.selector, batchId, bytes32(0)));
            copy.challengeData(batchId, data);
        }
    }
}
