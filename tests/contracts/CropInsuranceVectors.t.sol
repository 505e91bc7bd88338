// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

import {ICropInsurance} from "../../contracts/interfaces/ICropInsurance.sol";
import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {CropFixture} from "./utils/CropFixture.sol";
import {PackedObservations} from "./utils/PackedObservations.sol";

/// @dev The shared WeatherObservation vectors (tests/vectors/eip712-products.json, written by scripts/gen-vectors
/// from oracle/protocol/eip712.py): CropInsurance must compute the very digest the Python side signs, on every chain and
/// address of the file, and the vector's signature must recover to its signer (65-byte and ERC-2098 compact forms).
contract CropInsuranceVectorsTest is CropFixture {
    string internal constant PATH = "tests/vectors/eip712-products.json";

    function _s(uint256 i, string memory field) internal pure returns (string memory) {
        return string.concat(".vectors[", vm.toString(i), "].", field);
    }

    function _isWeather(string memory json, uint256 i) internal pure returns (bool) {
        return keccak256(bytes(vm.parseJsonString(json, _s(i, "primaryType")))) == keccak256("WeatherObservation");
    }

    /// @dev A copy of the contract at the vector's address and chain id: OpenZeppelin EIP712 rebuilds the domain.
    function _installAt(string memory json, uint256 i) internal returns (ICropInsurance target) {
        vm.chainId(vm.parseJsonUint(json, _s(i, "domain.chainId")));
        target = ICropInsurance(vm.parseJsonAddress(json, _s(i, "domain.verifyingContract")));
        vm.etch(address(target), address(crop).code);
    }

    function _message(string memory json, uint256 i) internal pure returns (ICropInsurance.SignedObservation memory o) {
        o.station = vm.parseJsonAddress(json, _s(i, "message.station"));
        o.seq = uint64(vm.parseJsonUint(json, _s(i, "message.seq")));
        o.timestamp = uint64(vm.parseJsonUint(json, _s(i, "message.timestamp")));
        o.rainfall = uint64(vm.parseJsonUint(json, _s(i, "message.rainfall")));
        o.maxTemperature = int32(vm.parseJsonInt(json, _s(i, "message.maxTemperature")));
    }

    function _compact(bytes memory sig) internal pure returns (bytes32 r, bytes32 vs) {
        (bytes32 r_, bytes32 s, uint8 v) = split(sig);
        return (r_, bytes32(uint256(s) | (uint256(v - 27) << 255)));
    }

    function test_Vectors_WeatherObservationTypehashEqualsPythonType() public view {
        string memory json = vm.readFile(PATH);
        assertEq(keccak256(bytes(vm.parseJsonString(json, ".types.WeatherObservation"))), crop.OBSERVATION_TYPEHASH());
        assertEq(
            keccak256(bytes(vm.parseJsonString(json, ".domainType"))),
            keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
        );
    }

    function test_Vectors_WeatherObservationDigestsEqualPythonDigests() public {
        string memory json = vm.readFile(PATH);
        uint256 n = vm.parseJsonUint(json, ".count");
        uint256 checked;
        for (uint256 i = 0; i < n; ++i) {
            if (!_isWeather(json, i)) continue;
            ++checked;
            string memory name = vm.parseJsonString(json, _s(i, "name"));
            assertEq(vm.parseJsonString(json, _s(i, "domain.name")), "iotsettle");
            assertEq(vm.parseJsonString(json, _s(i, "domain.version")), "1");
            assertEq(vm.parseJsonBytes32(json, _s(i, "typeHash")), crop.OBSERVATION_TYPEHASH(), name);

            ICropInsurance target = _installAt(json, i);
            ICropInsurance.SignedObservation memory o = _message(json, i);
            bytes32 digest = target.hashObservation(o.station, o.seq, o.timestamp, o.rainfall, o.maxTemperature);
            assertEq(digest, vm.parseJsonBytes32(json, _s(i, "digest")), name);

            address signer = vm.parseJsonAddress(json, _s(i, "signer"));
            assertEq(vm.addr(vm.parseJsonUint(json, _s(i, "privateKey"))), signer, "key and signer agree");
            bytes memory sig = vm.parseJsonBytes(json, _s(i, "signature"));
            assertEq(ECDSA.recover(digest, sig), signer, "signature recovers");
            (bytes32 r, bytes32 vs) = _compact(sig);
            assertEq(ECDSA.recover(digest, r, vs), signer, "compact signature recovers");
        }
        assertGe(checked, 4, "the file holds the WeatherObservation vectors");
    }

    /// @dev End to end: the Python-signed first observation (seq 1) of a station registered under the vector's key
    /// is recorded by the contract at the vector's address, exactly as relayed (compact signature).
    function test_Vectors_PythonSignedObservationIsRecorded() public {
        string memory json = vm.readFile(PATH);
        uint256 n = vm.parseJsonUint(json, ".count");
        for (uint256 i = 0; i < n; ++i) {
            if (!_isWeather(json, i)) continue;
            ICropInsurance.SignedObservation memory o = _message(json, i);
            address signer = vm.parseJsonAddress(json, _s(i, "signer"));
            // only vectors a freshly registered station could sign first (its seqs run 1, 2, 3… without gaps)
            if (o.station != signer || o.seq != 1) continue;
            if (registry.deviceOf(signer).status != IDeviceRegistry.DeviceStatus.None) continue;
            ICropInsurance target = _installAt(json, i);
            registerDevice(
                vm.parseJsonUint(json, _s(i, "privateKey")), IDeviceRegistry.DeviceKind.WeatherStation, owner
            );
            if (o.timestamp > block.timestamp) vm.warp(o.timestamp);
            (o.r, o.vs) = _compact(vm.parseJsonBytes(json, _s(i, "signature")));
            vm.expectEmit(address(target));
            emit ICropInsurance.ObservationRecorded(o.station, o.seq, o.timestamp, o.rainfall, o.maxTemperature);
            assertEq(target.record(PackedObservations.pack(one(o))), 1, vm.parseJsonString(json, _s(i, "name")));
            assertEq(target.stationState(o.station).lastRainfall, o.rainfall);
            return;
        }
        revert("no vector signed by its own station");
    }
}
