// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {console} from "forge-std/console.sol";

import {IHealthInsurance} from "../../contracts/interfaces/IHealthInsurance.sol";
import {HealthFixture} from "./utils/HealthFixture.sol";

/// @dev Gas per activity summary as a relayer pays it: 21,000 base + calldata + execution, with the contracts'
/// storage cold (`vm.cool`) as at the start of a real transaction.
contract HealthInsuranceGasTest is HealthFixture {
    /// @dev What this code measures today, plus a little slack: a regression guard.
    uint256 internal constant CEILING_PER_SUMMARY = 24_000;

    /// @dev 100 policies (100 wearables), each with its first weekly period over: the batch settles one summary
    /// of each. The tier words were written at acceptance, so no summary pays for a fresh slot.
    function test_GasPerSummary_Batch100() public {
        uint256 n = 100;
        uint256[] memory ids = new uint256[](n);
        uint256[] memory keys = new uint256[](n);
        for (uint256 i = 0; i < n; ++i) {
            keys[i] = deviceKey(3_000 + i);
            ids[i] = openHealthPolicy(registerWearable(keys[i]), defaultTerms(52), 100 * uint256(BASE_RATE));
        }
        vm.warp(block.timestamp + PERIOD + 1);
        IHealthInsurance.SignedSummary[] memory batch = new IHealthInsurance.SignedSummary[](n);
        for (uint256 i = 0; i < n; ++i) {
            batch[i] = summaryOf(keys[i], ids[i], 0, uint8(i % 4));
        }
        bytes memory packed = packSummaries(batch);
        bytes memory data = abi.encodeCall(health.settle, (packed));
        vm.cool(address(health));
        vm.cool(address(registry));
        vm.prank(relayer);
        assertEq(health.settle(packed), n, "every summary settles");
        uint256 txGas = 21_000 + calldataGas(data) + vm.lastCallGas().gasTotalUsed;
        console.log("health: settle batch", n);
        console.log("  calldata gas per summary", calldataGas(data) / n);
        console.log("  gas per summary", txGas / n);
        assertLe(txGas / n, CEILING_PER_SUMMARY, "regression: gas per summary, batch of 100");
        for (uint256 i = 0; i < n; ++i) {
            assertEq(health.policyOf(ids[i]).tierCounts[i % 4], 1, "each summary counted");
        }
    }
}
