// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {console} from "forge-std/console.sol";

import {IMotorInsurance} from "../../contracts/interfaces/IMotorInsurance.sol";
import {MotorFixture} from "./utils/MotorFixture.sol";

/// @dev Gas per telematics report as a relayer pays it: 21,000 base + calldata + execution, with the contracts'
/// storage cold (`vm.cool`) as at the start of a real transaction. docs/BENCHMARKS.md explains the figure.
contract MotorInsuranceGasTest is MotorFixture {
    /// @dev The product goal (issue 14).
    uint256 internal constant TARGET_PER_REPORT = 18_000;
    /// @dev What this code measures today, plus a little slack: a regression guard, not the goal.
    uint256 internal constant CEILING_PER_REPORT = 17_700;

    /// @dev The steady state the product runs in: every policy already has a settled report, and the batch settles
    /// the next one of each (100 policies, 100 vehicles), each with distance and one new behaviour event.
    function test_GasPerReport_SteadyState_Batch100() public {
        uint256 n = 100;
        uint256[] memory keys = new uint256[](n);
        uint256[] memory ids = new uint256[](n);
        IMotorInsurance.SignedTelematics[] memory batch = new IMotorInsurance.SignedTelematics[](n);
        for (uint256 i = 0; i < n; ++i) {
            keys[i] = deviceKey(2_000 + i);
            ids[i] = openPolicy(registerVehicle(keys[i]), 100, 8_000, 20_000, 1_000, 1_000_000, 1e21);
            batch[i] = signTelematics(keys[i], ids[i], 1, uint64(block.timestamp), 1_012_345 + uint64(i), 1, 0);
        }
        vm.prank(relayer);
        assertEq(_settleBatch(batch), n, "warm-up reports settle");
        vm.warp(block.timestamp + 60);
        for (uint256 i = 0; i < n; ++i) {
            batch[i] = signTelematics(keys[i], ids[i], 2, uint64(block.timestamp), 1_023_456 + uint64(i), 1, 1);
        }
        // Packed (the terms read through the view) before the storage is cooled: the view must not warm a slot
        // that settle then reads.
        bytes memory packed = packReports(batch);
        bytes memory data = abi.encodeCall(motor.settle, (packed));
        vm.cool(address(motor));
        vm.cool(address(registry));
        vm.cool(address(token));
        vm.prank(relayer);
        assertEq(motor.settle(packed), n, "every report settles");
        uint256 txGas = 21_000 + calldataGas(data) + vm.lastCallGas().gasTotalUsed;
        console.log("steady state: settle batch", n);
        console.log("  calldata gas per report", calldataGas(data) / n);
        console.log("  gas per report", txGas / n);
        console.log("  product target per report", TARGET_PER_REPORT);
        assertLe(txGas / n, CEILING_PER_REPORT, "regression: gas per report, steady state, batch of 100");
        for (uint256 i = 0; i < n; ++i) {
            assertEq(motor.policyOf(ids[i]).lastSeq, 2, "the second report of every policy settled");
        }
    }

    function _settleBatch(IMotorInsurance.SignedTelematics[] memory batch) internal returns (uint256) {
        return motor.settle(packReports(batch));
    }
}
