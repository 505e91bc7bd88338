// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

import {IHealthInsurance} from "../../contracts/interfaces/IHealthInsurance.sol";
import {HealthFixture} from "./utils/HealthFixture.sol";

/// @dev The shared ActivitySummary vectors (tests/vectors/eip712-products.json, written by scripts/gen-vectors from
/// oracle/protocol/eip712.py): HealthInsurance must compute the very digest the Python side signs, on every chain and
/// address of the file, and the vector's signature must recover to its signer (65-byte and compact forms alike).
contract HealthInsuranceVectorsTest is HealthFixture {
    string internal constant PATH = "tests/vectors/eip712-products.json";

    function _s(uint256 i, string memory field) internal pure returns (string memory) {
        return string.concat(".vectors[", vm.toString(i), "].", field);
    }

    function test_Vectors_ActivitySummaryTypehashEqualsPythonType() public view {
        string memory json = vm.readFile(PATH);
        assertEq(
            keccak256(bytes(vm.parseJsonString(json, ".types.ActivitySummary"))), health.ACTIVITY_SUMMARY_TYPEHASH()
        );
    }

    function test_Vectors_ActivitySummaryDigestsEqualPythonDigests() public {
        string memory json = vm.readFile(PATH);
        uint256 n = vm.parseJsonUint(json, ".count");
        uint256 checked;
        for (uint256 i = 0; i < n; ++i) {
            if (keccak256(bytes(vm.parseJsonString(json, _s(i, "primaryType")))) != keccak256("ActivitySummary")) {
                continue;
            }
            ++checked;
            string memory name = vm.parseJsonString(json, _s(i, "name"));
            assertEq(vm.parseJsonBytes32(json, _s(i, "typeHash")), health.ACTIVITY_SUMMARY_TYPEHASH(), name);

            // A copy of the contract at the vector's address and chain id: OpenZeppelin EIP712 rebuilds the domain.
            vm.chainId(vm.parseJsonUint(json, _s(i, "domain.chainId")));
            address target = vm.parseJsonAddress(json, _s(i, "domain.verifyingContract"));
            vm.etch(target, address(health).code);
            bytes32 digest = IHealthInsurance(target)
                .hashActivitySummary(
                    vm.parseJsonUint(json, _s(i, "message.policyId")),
                    uint64(vm.parseJsonUint(json, _s(i, "message.seq"))),
                    uint64(vm.parseJsonUint(json, _s(i, "message.timestamp"))),
                    uint32(vm.parseJsonUint(json, _s(i, "message.period"))),
                    uint8(vm.parseJsonUint(json, _s(i, "message.tier")))
                );
            assertEq(digest, vm.parseJsonBytes32(json, _s(i, "digest")), name);

            address signer = vm.parseJsonAddress(json, _s(i, "signer"));
            bytes memory sig = vm.parseJsonBytes(json, _s(i, "signature"));
            assertEq(ECDSA.recover(digest, sig), signer, "signature recovers");
            (bytes32 r, bytes32 s, uint8 v) = split(sig);
            bytes32 vs = bytes32(uint256(s) | (uint256(v - 27) << 255));
            assertEq(ECDSA.recover(digest, r, vs), signer, "compact signature recovers");
        }
        assertGe(checked, 6, "the file holds the ActivitySummary vectors");
    }
}
