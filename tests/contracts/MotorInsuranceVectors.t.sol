// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

import {IMotorInsurance} from "../../contracts/interfaces/IMotorInsurance.sol";
import {MotorFixture} from "./utils/MotorFixture.sol";

/// @dev The shared Telematics vectors (tests/vectors/eip712-products.json, written by scripts/gen-vectors from
/// oracle/protocol/eip712.py): MotorInsurance must compute the very digest the Python side signs, on every chain and address
/// of the file, and the vector's signature must recover to its signer (65-byte and ERC-2098 compact forms alike).
contract MotorInsuranceVectorsTest is MotorFixture {
    string internal constant PATH = "tests/vectors/eip712-products.json";

    function _s(uint256 i, string memory field) internal pure returns (string memory) {
        return string.concat(".vectors[", vm.toString(i), "].", field);
    }

    function test_Vectors_TelematicsTypehashEqualsPythonType() public view {
        string memory json = vm.readFile(PATH);
        assertEq(keccak256(bytes(vm.parseJsonString(json, ".types.Telematics"))), motor.TELEMATICS_TYPEHASH());
        assertEq(
            keccak256(bytes(vm.parseJsonString(json, ".domainType"))),
            keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
        );
    }

    function test_Vectors_TelematicsDigestsEqualPythonDigests() public {
        string memory json = vm.readFile(PATH);
        uint256 n = vm.parseJsonUint(json, ".count");
        uint256 checked;
        for (uint256 i = 0; i < n; ++i) {
            if (keccak256(bytes(vm.parseJsonString(json, _s(i, "primaryType")))) != keccak256("Telematics")) continue;
            ++checked;
            string memory name = vm.parseJsonString(json, _s(i, "name"));
            assertEq(vm.parseJsonString(json, _s(i, "domain.name")), "iotsettle");
            assertEq(vm.parseJsonString(json, _s(i, "domain.version")), "1");
            assertEq(vm.parseJsonBytes32(json, _s(i, "typeHash")), motor.TELEMATICS_TYPEHASH(), name);

            // A copy of the contract at the vector's address and chain id: OpenZeppelin EIP712 rebuilds the domain.
            vm.chainId(vm.parseJsonUint(json, _s(i, "domain.chainId")));
            address target = vm.parseJsonAddress(json, _s(i, "domain.verifyingContract"));
            vm.etch(target, address(motor).code);
            bytes32 digest = IMotorInsurance(target)
                .hashTelematics(
                    vm.parseJsonUint(json, _s(i, "message.policyId")),
                    uint64(vm.parseJsonUint(json, _s(i, "message.seq"))),
                    uint64(vm.parseJsonUint(json, _s(i, "message.timestamp"))),
                    uint64(vm.parseJsonUint(json, _s(i, "message.odometer"))),
                    uint32(vm.parseJsonUint(json, _s(i, "message.harshBraking"))),
                    uint32(vm.parseJsonUint(json, _s(i, "message.speeding")))
                );
            assertEq(digest, vm.parseJsonBytes32(json, _s(i, "digest")), name);

            address signer = vm.parseJsonAddress(json, _s(i, "signer"));
            assertEq(vm.addr(vm.parseJsonUint(json, _s(i, "privateKey"))), signer, "key and signer agree");
            bytes memory sig = vm.parseJsonBytes(json, _s(i, "signature"));
            assertEq(ECDSA.recover(digest, sig), signer, "signature recovers");
            (bytes32 r, bytes32 s, uint8 v) = split(sig);
            bytes32 vs = bytes32(uint256(s) | (uint256(v - 27) << 255));
            assertEq(ECDSA.recover(digest, r, vs), signer, "compact signature recovers");
        }
        assertGe(checked, 4, "the file holds the Telematics vectors");
    }
}
