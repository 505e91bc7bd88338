// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

import {IWithdrawalGuard} from "../../contracts/interfaces/IWithdrawalGuard.sol";
import {WithdrawalGuard} from "../../contracts/WithdrawalGuard.sol";
import {Fixture} from "./utils/Fixture.sol";

/// @dev The shared guard vectors (tests/vectors/eip712-guard.json, written by scripts/gen-vectors from
/// oracle/protocol/eip712.py): the guard computes the very digests the Python device signs. A WithdrawalApproval is
/// in the domain of the ledger it names (the vector's verifying contract); a GuardUpdate in the guard's own, so a copy
/// of the guard runs at the vector's address and chain.
contract WithdrawalGuardVectorsTest is Fixture {
    string internal constant PATH = "tests/vectors/eip712-guard.json";

    WithdrawalGuard internal guard;

    function setUp() public override {
        super.setUp();
        guard = new WithdrawalGuard(registry);
    }

    function _s(uint256 i, string memory field) internal pure returns (string memory) {
        return string.concat(".vectors[", vm.toString(i), "].", field);
    }

    function _is(string memory json, uint256 i, string memory primary) internal pure returns (bool) {
        return keccak256(bytes(vm.parseJsonString(json, _s(i, "primaryType")))) == keccak256(bytes(primary));
    }

    function test_Vectors_TypehashesEqualPythonTypes() public view {
        string memory json = vm.readFile(PATH);
        assertEq(
            keccak256(bytes(vm.parseJsonString(json, ".types.WithdrawalApproval"))),
            guard.WITHDRAWAL_APPROVAL_TYPEHASH()
        );
        assertEq(keccak256(bytes(vm.parseJsonString(json, ".types.GuardUpdate"))), guard.GUARD_UPDATE_TYPEHASH());
    }

    function test_Vectors_DigestsEqualPythonDigests() public {
        string memory json = vm.readFile(PATH);
        uint256 n = vm.parseJsonUint(json, ".count");
        uint256 approvals;
        for (uint256 i = 0; i < n; ++i) {
            string memory name = vm.parseJsonString(json, _s(i, "name"));
            vm.chainId(vm.parseJsonUint(json, _s(i, "domain.chainId")));
            bool approval = _is(json, i, "WithdrawalApproval");
            if (approval) ++approvals;
            bytes32 digest = approval ? _approvalDigest(json, i) : _updateDigest(json, i);
            assertEq(digest, vm.parseJsonBytes32(json, _s(i, "digest")), name);
            bytes memory sig = vm.parseJsonBytes(json, _s(i, "signature"));
            assertEq(ECDSA.recover(digest, sig), vm.parseJsonAddress(json, _s(i, "signer")), name);
        }
        assertGe(approvals, 4, "the file holds WithdrawalApproval vectors");
        assertGe(n - approvals, 4, "the file holds GuardUpdate vectors");
    }

    function _approvalDigest(string memory json, uint256 i) internal view returns (bytes32) {
        return guard.hashWithdrawalApproval(
            vm.parseJsonAddress(json, _s(i, "domain.verifyingContract")),
            vm.parseJsonAddress(json, _s(i, "message.account")),
            vm.parseJsonAddress(json, _s(i, "message.token")),
            vm.parseJsonUint(json, _s(i, "message.amount")),
            vm.parseJsonUint(json, _s(i, "message.nonce")),
            uint64(vm.parseJsonUint(json, _s(i, "message.deadline"))),
            vm.parseJsonBytes32(json, _s(i, "message.location"))
        );
    }

    function _updateDigest(string memory json, uint256 i) internal returns (bytes32) {
        address verifying = vm.parseJsonAddress(json, _s(i, "domain.verifyingContract"));
        vm.etch(verifying, address(guard).code);
        return IWithdrawalGuard(verifying)
            .hashGuardUpdate(
                vm.parseJsonAddress(json, _s(i, "message.account")),
                vm.parseJsonAddress(json, _s(i, "message.token")),
                vm.parseJsonUint(json, _s(i, "message.enabled")) == 1,
                vm.parseJsonUint(json, _s(i, "message.threshold")),
                vm.parseJsonBytes32Array(json, _s(i, "message.cells")),
                vm.parseJsonUint(json, _s(i, "message.nonce")),
                uint64(vm.parseJsonUint(json, _s(i, "message.deadline")))
            );
    }
}
