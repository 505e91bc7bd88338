// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {Fixture} from "./utils/Fixture.sol";

/// @dev The shared EIP-712 vectors (tests/vectors/eip712*.json, written by scripts/gen-vectors from
/// oracle/protocol/eip712.py): the contracts must produce the very digests the Python side computes, and OpenZeppelin
/// ECDSA must recover the vector's signer. tests/protocol/test_vectors.py checks the same file from Python.
contract VectorsTest is Fixture {
    string internal constant PATH = "tests/vectors/eip712.json";
    string internal constant BULK_PATH = "tests/vectors/eip712-bulk.json";

    function _s(uint256 i, string memory field) internal pure returns (string memory) {
        return string.concat(".vectors[", vm.toString(i), "].", field);
    }

    /// @dev Put a copy of `source`'s code at the vector's verifying contract on the vector's chain: OpenZeppelin
    /// EIP712 rebuilds the domain separator for the new address and chain id.
    function _installAt(string memory json, uint256 i, address source) internal returns (address target) {
        vm.chainId(vm.parseJsonUint(json, _s(i, "domain.chainId")));
        target = vm.parseJsonAddress(json, _s(i, "domain.verifyingContract"));
        vm.etch(target, source.code);
    }

    function test_Vectors_ContractDigestsEqualPythonDigests() public {
        string memory json = vm.readFile(PATH);
        assertEq(
            keccak256(bytes(vm.parseJsonString(json, ".domainType"))),
            keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
        );
        assertEq(keccak256(bytes(vm.parseJsonString(json, ".types.Reading"))), billing.READING_TYPEHASH());
        assertEq(keccak256(bytes(vm.parseJsonString(json, ".types.Delivery"))), escrow.DELIVERY_TYPEHASH());
        assertEq(keccak256(bytes(vm.parseJsonString(json, ".types.Registration"))), registry.REGISTRATION_TYPEHASH());
        assertEq(keccak256(bytes(vm.parseJsonString(json, ".types.KeyRotation"))), registry.KEY_ROTATION_TYPEHASH());

        uint256 n = vm.parseJsonUint(json, ".count");
        assertGt(n, 30, "the file holds the curated vectors");
        uint256[5] memory perType;
        for (uint256 i = 0; i < n; ++i) {
            string memory primaryType = vm.parseJsonString(json, _s(i, "primaryType"));
            assertEq(vm.parseJsonString(json, _s(i, "domain.name")), "iotsettle");
            assertEq(vm.parseJsonString(json, _s(i, "domain.version")), "1");
            bytes32 digest = _contractDigest(json, i, primaryType, perType);
            assertEq(digest, vm.parseJsonBytes32(json, _s(i, "digest")), vm.parseJsonString(json, _s(i, "name")));

            address signer = vm.parseJsonAddress(json, _s(i, "signer"));
            assertEq(vm.addr(vm.parseJsonUint(json, _s(i, "privateKey"))), signer, "key and signer agree");
            assertEq(ECDSA.recover(digest, vm.parseJsonBytes(json, _s(i, "signature"))), signer, "signature recovers");
        }
        for (uint256 t = 1; t < 5; ++t) {
            assertGt(perType[t], 4, "every primary type is covered");
        }
    }

    function _contractDigest(string memory json, uint256 i, string memory primaryType, uint256[5] memory perType)
        internal
        returns (bytes32)
    {
        bytes32 t = keccak256(bytes(primaryType));
        if (t == keccak256("Registration")) {
            ++perType[1];
            IDeviceRegistry r = IDeviceRegistry(_installAt(json, i, address(registry)));
            return r.hashRegistration(
                vm.parseJsonAddress(json, _s(i, "message.device")),
                vm.parseJsonAddress(json, _s(i, "message.owner")),
                IDeviceRegistry.DeviceKind(vm.parseJsonUint(json, _s(i, "message.kind"))),
                vm.parseJsonBytes32(json, _s(i, "message.metadataHash")),
                uint64(vm.parseJsonUint(json, _s(i, "message.deadline")))
            );
        }
        if (t == keccak256("KeyRotation")) {
            ++perType[2];
            IDeviceRegistry r = IDeviceRegistry(_installAt(json, i, address(registry)));
            return r.hashKeyRotation(
                vm.parseJsonAddress(json, _s(i, "message.device")),
                vm.parseJsonAddress(json, _s(i, "message.newKey")),
                uint64(vm.parseJsonUint(json, _s(i, "message.deadline")))
            );
        }
        if (t == keccak256("Reading")) {
            ++perType[3];
            address target = _installAt(json, i, address(billing));
            return HashReading(target)
                .hashReading(
                    vm.parseJsonUint(json, _s(i, "message.agreementId")),
                    uint64(vm.parseJsonUint(json, _s(i, "message.seq"))),
                    uint64(vm.parseJsonUint(json, _s(i, "message.timestamp"))),
                    vm.parseJsonUint(json, _s(i, "message.value"))
                );
        }
        assertEq(t, keccak256("Delivery"), "known primary type");
        ++perType[4];
        address escrowAt = _installAt(json, i, address(escrow));
        return HashDelivery(escrowAt)
            .hashDelivery(
                vm.parseJsonUint(json, _s(i, "message.escrowId")),
                uint64(vm.parseJsonUint(json, _s(i, "message.seq"))),
                uint64(vm.parseJsonUint(json, _s(i, "message.timestamp"))),
                vm.parseJsonBytes32(json, _s(i, "message.location")),
                int32(vm.parseJsonInt(json, _s(i, "message.maxTemperature")))
            );
    }

    function _bulkDomain(string memory json, string memory primaryType, address source) internal returns (address target) {
        string memory base = string.concat(".", primaryType, ".domain.");
        vm.chainId(vm.parseJsonUint(json, string.concat(base, "chainId")));
        target = vm.parseJsonAddress(json, string.concat(base, "verifyingContract"));
        vm.etch(target, source.code);
    }

    function _col(string memory primaryType, string memory column) internal pure returns (string memory) {
        return string.concat(".", primaryType, ".", column);
    }

    /// @dev Hundreds of random readings (edge values over-represented): same digest, compact signature recovers.
    function test_Vectors_BulkReadings() public {
        string memory json = vm.readFile(BULK_PATH);
        HashReading b = HashReading(_bulkDomain(json, "Reading", address(billing)));
        uint256[] memory ids = vm.parseJsonUintArray(json, _col("Reading", "agreementId"));
        uint256[] memory seqs = vm.parseJsonUintArray(json, _col("Reading", "seq"));
        uint256[] memory times = vm.parseJsonUintArray(json, _col("Reading", "timestamp"));
        uint256[] memory values = vm.parseJsonUintArray(json, _col("Reading", "value"));
        bytes32[] memory digests = vm.parseJsonBytes32Array(json, _col("Reading", "digest"));
        bytes32[] memory rs = vm.parseJsonBytes32Array(json, _col("Reading", "r"));
        bytes32[] memory vss = vm.parseJsonBytes32Array(json, _col("Reading", "vs"));
        address[] memory signers = vm.parseJsonAddressArray(json, _col("Reading", "signer"));
        assertEq(ids.length, vm.parseJsonUint(json, _col("Reading", "count")));
        assertGe(ids.length, 500);
        for (uint256 i = 0; i < ids.length; ++i) {
            bytes32 digest = b.hashReading(ids[i], uint64(seqs[i]), uint64(times[i]), values[i]);
            assertEq(digest, digests[i]);
            assertEq(ECDSA.recover(digest, rs[i], vss[i]), signers[i]);
        }
    }

    function test_Vectors_BulkDeliveries() public {
        string memory json = vm.readFile(BULK_PATH);
        HashDelivery e = HashDelivery(_bulkDomain(json, "Delivery", address(escrow)));
        uint256[] memory ids = vm.parseJsonUintArray(json, _col("Delivery", "escrowId"));
        uint256[] memory seqs = vm.parseJsonUintArray(json, _col("Delivery", "seq"));
        uint256[] memory times = vm.parseJsonUintArray(json, _col("Delivery", "timestamp"));
        bytes32[] memory locations = vm.parseJsonBytes32Array(json, _col("Delivery", "location"));
        int256[] memory temps = vm.parseJsonIntArray(json, _col("Delivery", "maxTemperature"));
        bytes32[] memory digests = vm.parseJsonBytes32Array(json, _col("Delivery", "digest"));
        bytes32[] memory rs = vm.parseJsonBytes32Array(json, _col("Delivery", "r"));
        bytes32[] memory vss = vm.parseJsonBytes32Array(json, _col("Delivery", "vs"));
        address[] memory signers = vm.parseJsonAddressArray(json, _col("Delivery", "signer"));
        assertGe(ids.length, 500);
        for (uint256 i = 0; i < ids.length; ++i) {
            bytes32 digest = e.hashDelivery(ids[i], uint64(seqs[i]), uint64(times[i]), locations[i], int32(temps[i]));
            assertEq(digest, digests[i]);
            assertEq(ECDSA.recover(digest, rs[i], vss[i]), signers[i]);
        }
    }
}

interface HashReading {
    function hashReading(uint256 agreementId, uint64 seq, uint64 timestamp, uint256 value)
        external
        view
        returns (bytes32);
}

interface HashDelivery {
    function hashDelivery(uint256 escrowId, uint64 seq, uint64 timestamp, bytes32 location, int32 maxTemperature)
        external
        view
        returns (bytes32);
}
