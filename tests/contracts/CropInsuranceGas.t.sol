// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {console} from "forge-std/console.sol";

import {ICropInsurance} from "../../contracts/interfaces/ICropInsurance.sol";
import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {CropFixture} from "./utils/CropFixture.sol";
import {PackedObservations} from "./utils/PackedObservations.sol";

/// @dev Gas per weather observation as a relayer pays it (21,000 + calldata + execution) in the steady state the
/// product runs in: 100 stations, each serving one open season and already observed once inside its window, relay
/// their next observation in one batch; storage cold as at the start of a transaction.
contract CropInsuranceGasTest is CropFixture {
    uint256 internal constant N = 100;
    /// @dev The regression ceiling; issue 14's target is 18,000.
    uint256 internal constant CEILING_PER_OBSERVATION = 18_000;

    uint256[] internal keys;
    address[] internal fleet;

    function setUp() public override {
        super.setUp();
        uint256 pool = newPool(1_000_000);
        for (uint256 i = 0; i < N + 2; ++i) {
            keys.push(deviceKey(3_000 + i));
            fleet.push(registerDevice(keys[i], IDeviceRegistry.DeviceKind.WeatherStation, owner));
            vm.prank(owner);
            crop.allowInsurer(fleet[i], insurer, true);
        }
        // 34 seasons of 3 stations cover the 102 stations; the batch uses the first 100.
        for (uint256 j = 0; j < (N + 2) / 3; ++j) {
            ICropInsurance.SeasonTerms memory t = rainTerms(3, 2);
            for (uint256 i = 0; i < 3; ++i) {
                t.stations[i] = fleet[j * 3 + i];
            }
            newSeason(pool, t);
        }
        vm.warp(seasonStart);
        ICropInsurance.SignedObservation[] memory first = _batch(1, 1_000);
        assertEq(_record(first), N, "warm-up observations recorded");
        vm.warp(seasonStart + 1 hours);
    }

    function _batch(uint64 seq, uint64 rainfall) internal view returns (ICropInsurance.SignedObservation[] memory b) {
        b = new ICropInsurance.SignedObservation[](N);
        for (uint256 i = 0; i < N; ++i) {
            b[i] = signObs(keys[i], fleet[i], seq, uint64(block.timestamp), rainfall + uint64(i), 2_500);
        }
    }

    function _calldata(ICropInsurance.SignedObservation[] memory b) internal view returns (bytes memory) {
        return abi.encodeCall(crop.record, (PackedObservations.pack(b)));
    }

    function _record(ICropInsurance.SignedObservation[] memory b) internal returns (uint256) {
        return crop.record(PackedObservations.pack(b));
    }

    function test_GasPerObservation_SteadyState_Batch100() public {
        ICropInsurance.SignedObservation[] memory b = _batch(2, 1_250);
        bytes memory data = _calldata(b);
        vm.cool(address(crop));
        vm.cool(address(registry));
        vm.prank(relayer);
        assertEq(_record(b), N, "every observation recorded");
        uint256 txGas = 21_000 + calldataGas(data) + vm.lastCallGas().gasTotalUsed;
        console.log("steady state: record batch", N);
        console.log("  calldata gas per observation", calldataGas(data) / N);
        console.log("  gas per observation", txGas / N);
        assertLe(txGas / N, CEILING_PER_OBSERVATION, "regression: gas per observation, steady state, batch of 100");
        // The season figures still follow the station: its last observation in the window is this one.
        ICropInsurance.StationSeason memory ss = crop.stationSeason(1, fleet[0]);
        assertEq(ss.firstRainfall, 1_000);
        assertEq(ss.lastRainfall, 1_250);
        assertEq(ss.lastTimestamp, block.timestamp);
    }
}
