// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {ICommonErrors} from "../../contracts/interfaces/ICommonErrors.sol";
import {IPullPayments} from "../../contracts/interfaces/IPullPayments.sol";
import {IWithdrawalGuard} from "../../contracts/interfaces/IWithdrawalGuard.sol";
import {WithdrawalGuard} from "../../contracts/WithdrawalGuard.sol";
import {Fixture} from "./utils/Fixture.sol";
import {LedgerHarness} from "./utils/LedgerHarness.sol";

/// @dev The device as a second factor: every attack of docs/products/device-guard.md, each against the real registry,
/// guard and pull-payment base.
contract WithdrawalGuardTest is Fixture {
    address internal constant ETH = address(0);
    uint256 internal constant THRESHOLD = 1 ether;

    WithdrawalGuard internal guard;
    LedgerHarness internal ledger;
    LedgerHarness internal otherLedger;

    /// @dev The account whose key a thief may hold, and its phone (a registered device it owns).
    uint256 internal accountKey = 0xA11CE;
    address internal account;
    uint256 internal phoneKey;
    address internal phone;

    function setUp() public override {
        super.setUp();
        guard = new WithdrawalGuard(registry);
        ledger = new LedgerHarness();
        otherLedger = new LedgerHarness();
        account = vm.addr(accountKey);
        phoneKey = deviceKey(1);
        phone = registerDevice(phoneKey, IDeviceRegistry.DeviceKind.Tracker, account);
        vm.deal(address(this), 1_000 ether);
    }

    // ---------------------------------------------------------------- helpers

    function _cells(string memory a) internal pure returns (bytes32[] memory cells) {
        cells = new bytes32[](1);
        cells[0] = bytes32(bytes(a));
    }

    function _setGuard(uint256 key, address who, uint256 threshold, bytes32[] memory cells) internal {
        uint64 deadline = uint64(block.timestamp + 1 hours);
        bytes32 digest = guard.hashGuardUpdate(who, ETH, true, threshold, cells, guard.nonces(who), deadline);
        vm.prank(who);
        guard.setGuard(ETH, threshold, cells, deadline, sign65(key, digest));
    }

    /// @dev The account opts in: at the guard (signed by its phone), then at both ledgers.
    function _optIn(bytes32[] memory cells) internal {
        _setGuard(phoneKey, account, THRESHOLD, cells);
        vm.startPrank(account);
        ledger.setWithdrawalGuard(ETH, address(guard));
        otherLedger.setWithdrawalGuard(ETH, address(guard));
        vm.stopPrank();
    }

    function _signApproval(uint256 key, address ledgerAt, address who, address tok, uint256 amount, bytes32 location)
        internal
        view
        returns (bytes memory)
    {
        uint64 deadline = uint64(block.timestamp + 10 minutes);
        return sign65(
            key, guard.hashWithdrawalApproval(ledgerAt, who, tok, amount, guard.nonces(who), deadline, location)
        );
    }

    function _approve(address ledgerAt, uint256 amount, bytes32 location, bytes memory signature) internal {
        vm.prank(account);
        guard.approveWithdrawal(ledgerAt, ETH, amount, uint64(block.timestamp + 10 minutes), location, signature);
    }

    function _recovered(address ledgerAt, address who, uint256 amount, bytes32 location, bytes memory signature)
        internal
        view
        returns (address)
    {
        bytes32 digest = guard.hashWithdrawalApproval(
            ledgerAt, who, ETH, amount, guard.nonces(who), uint64(block.timestamp + 10 minutes), location
        );
        return ECDSA.recover(digest, signature);
    }

    // ---------------------------------------------------------------- the account key alone

    function test_UnguardedAccountWithdrawsEverything() public {
        ledger.credit{value: 5 ether}(account);
        vm.prank(account);
        assertEq(ledger.withdraw(ETH), 5 ether);
        assertEq(account.balance, 5 ether);
    }

    function test_RevertWhen_StolenKeyWithdrawsAboveThreshold() public {
        _optIn(new bytes32[](0));
        ledger.credit{value: 5 ether}(account);
        vm.expectRevert(
            abi.encodeWithSelector(IWithdrawalGuard.DeviceApprovalRequired.selector, ETH, account, 5 ether, THRESHOLD)
        );
        vm.prank(account);
        ledger.withdraw(ETH);
        assertEq(ledger.withdrawable(ETH, account), 5 ether, "the credit stays where it was");
    }

    function test_StolenKeyTakesAtMostThresholdInSlices() public {
        _optIn(new bytes32[](0));
        ledger.credit{value: 0.6 ether}(account);
        vm.prank(account);
        ledger.withdraw(ETH);
        ledger.credit{value: 0.6 ether}(account);
        vm.expectRevert(
            abi.encodeWithSelector(IWithdrawalGuard.DeviceApprovalRequired.selector, ETH, account, 0.6 ether, 0.4 ether)
        );
        vm.prank(account);
        ledger.withdraw(ETH);
        assertEq(account.balance, 0.6 ether);
    }

    /// @dev Whatever sequence of credits and withdrawals, the key alone takes ledgerAt most the threshold from a ledger.
    function testFuzz_KeyAloneNeverTakesMoreThanThreshold(uint96[8] memory credits) public {
        _optIn(new bytes32[](0));
        for (uint256 i = 0; i < credits.length; ++i) {
            uint256 amount = bound(uint256(credits[i]), 1, 2 ether);
            ledger.credit{value: amount}(account);
            vm.prank(account);
            try ledger.withdraw(ETH) {} catch {}
        }
        assertLe(account.balance, THRESHOLD);
        assertEq(account.balance + ledger.withdrawable(ETH, account), address(ledger).balance + account.balance);
    }

    function test_RevertWhen_StolenKeyOptsOutAtTheLedger() public {
        _optIn(new bytes32[](0));
        vm.expectRevert(abi.encodeWithSelector(IPullPayments.StillGuarded.selector, ETH, account, address(guard)));
        vm.prank(account);
        ledger.setWithdrawalGuard(ETH, address(0));
    }

    function test_RevertWhen_StolenKeyClearsWithAnotherKey() public {
        _optIn(new bytes32[](0));
        uint64 deadline = uint64(block.timestamp + 1 hours);
        bytes32 digest = guard.hashGuardUpdate(account, ETH, false, 0, new bytes32[](0), guard.nonces(account), deadline);
        // The thief signs with the account key itself, which is no device of the account.
        vm.expectRevert(abi.encodeWithSelector(IWithdrawalGuard.NotAccountDevice.selector, account, account));
        vm.prank(account);
        guard.clearGuard(ETH, deadline, sign65(accountKey, digest));
    }

    function test_RevertWhen_StolenKeyRaisesThresholdWithoutDevice() public {
        _optIn(new bytes32[](0));
        address stranger = registerDevice(deviceKey(7), IDeviceRegistry.DeviceKind.Tracker, makeAddr("thief"));
        uint64 deadline = uint64(block.timestamp + 1 hours);
        bytes32 digest =
            guard.hashGuardUpdate(account, ETH, true, 100 ether, new bytes32[](0), guard.nonces(account), deadline);
        vm.expectRevert(abi.encodeWithSelector(IWithdrawalGuard.NotAccountDevice.selector, account, stranger));
        vm.prank(account);
        guard.setGuard(ETH, 100 ether, new bytes32[](0), deadline, sign65(deviceKey(7), digest));
    }

    // ---------------------------------------------------------------- with the device

    function test_DeviceApprovalLetsLargeWithdrawalThrough() public {
        _optIn(new bytes32[](0));
        ledger.credit{value: 5 ether}(account);
        bytes memory sig = _signApproval(phoneKey, address(ledger), account, ETH, 5 ether, 0);
        vm.expectEmit(address(guard));
        emit IWithdrawalGuard.WithdrawalApproved(address(ledger), account, ETH, phone, 5 ether, 1);
        _approve(address(ledger), 5 ether, 0, sig);
        vm.prank(account);
        assertEq(ledger.withdraw(ETH), 5 ether);
        assertEq(account.balance, 5 ether);
        (uint256 left,) = guard.approvalAt(address(ledger), account, ETH);
        assertEq(left, 0, "an approval is used once");
    }

    function test_RevertWhen_DeviceKeyAloneWithdraws() public {
        _optIn(new bytes32[](0));
        ledger.credit{value: 5 ether}(account);
        // The device is not the payee: the ledger pays msg.sender only.
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.NothingToWithdraw.selector, ETH, phone));
        vm.prank(phone);
        ledger.withdraw(ETH);
        // Nor can it record an approval for the account: approvals are recorded by the account itself.
        bytes memory sig = _signApproval(phoneKey, address(ledger), account, ETH, 5 ether, 0);
        vm.expectRevert(abi.encodeWithSelector(IWithdrawalGuard.NotGuarded.selector, phone, ETH));
        vm.prank(phone);
        guard.approveWithdrawal(address(ledger), ETH, 5 ether, uint64(block.timestamp + 10 minutes), 0, sig);
    }

    function test_RevertWhen_ApprovalReplayed() public {
        _optIn(new bytes32[](0));
        ledger.credit{value: 5 ether}(account);
        bytes memory sig = _signApproval(phoneKey, address(ledger), account, ETH, 5 ether, 0);
        _approve(address(ledger), 5 ether, 0, sig);
        vm.prank(account);
        ledger.withdraw(ETH);
        ledger.credit{value: 5 ether}(account);
        address signer = _recovered(address(ledger), account, 5 ether, 0, sig);
        vm.expectRevert(abi.encodeWithSelector(IWithdrawalGuard.NotAccountDevice.selector, account, signer));
        _approve(address(ledger), 5 ether, 0, sig);
    }

    function test_RevertWhen_ApprovalPastDeadline() public {
        _optIn(new bytes32[](0));
        uint64 deadline = uint64(block.timestamp + 10 minutes);
        bytes memory sig = _signApproval(phoneKey, address(ledger), account, ETH, 5 ether, 0);
        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(IWithdrawalGuard.ApprovalExpired.selector, deadline, deadline + 1));
        vm.prank(account);
        guard.approveWithdrawal(address(ledger), ETH, 5 ether, deadline, 0, sig);
    }

    function test_RevertWhen_RecordedApprovalUsedPastDeadline() public {
        _optIn(new bytes32[](0));
        ledger.credit{value: 5 ether}(account);
        _approve(address(ledger), 5 ether, 0, _signApproval(phoneKey, address(ledger), account, ETH, 5 ether, 0));
        vm.warp(block.timestamp + 10 minutes + 1);
        vm.expectRevert(
            abi.encodeWithSelector(IWithdrawalGuard.DeviceApprovalRequired.selector, ETH, account, 5 ether, THRESHOLD)
        );
        vm.prank(account);
        ledger.withdraw(ETH);
    }

    function test_RevertWhen_ApprovalForAnotherAmount() public {
        _optIn(new bytes32[](0));
        bytes memory sig = _signApproval(phoneKey, address(ledger), account, ETH, 2 ether, 0);
        address signer = _recovered(address(ledger), account, 3 ether, 0, sig);
        vm.expectRevert(abi.encodeWithSelector(IWithdrawalGuard.NotAccountDevice.selector, account, signer));
        _approve(address(ledger), 3 ether, 0, sig);
        // Recorded for 2, it cannot let 3 leave.
        _approve(address(ledger), 2 ether, 0, sig);
        ledger.credit{value: 3 ether}(account);
        vm.expectRevert(
            abi.encodeWithSelector(IWithdrawalGuard.DeviceApprovalRequired.selector, ETH, account, 3 ether, THRESHOLD)
        );
        vm.prank(account);
        ledger.withdraw(ETH);
    }

    function test_RevertWhen_ApprovalForAnotherToken() public {
        _optIn(new bytes32[](0));
        _setGuardFor(address(token));
        bytes memory sig = _signApproval(phoneKey, address(ledger), account, ETH, 5 ether, 0);
        uint64 deadline = uint64(block.timestamp + 10 minutes);
        bytes32 digest = guard.hashWithdrawalApproval(
            address(ledger), account, address(token), 5 ether, guard.nonces(account), deadline, 0
        );
        vm.expectRevert(
            abi.encodeWithSelector(IWithdrawalGuard.NotAccountDevice.selector, account, ECDSA.recover(digest, sig))
        );
        vm.prank(account);
        guard.approveWithdrawal(address(ledger), address(token), 5 ether, deadline, 0, sig);
    }

    function _setGuardFor(address tok) internal {
        uint64 deadline = uint64(block.timestamp + 1 hours);
        bytes32 digest =
            guard.hashGuardUpdate(account, tok, true, THRESHOLD, new bytes32[](0), guard.nonces(account), deadline);
        vm.prank(account);
        guard.setGuard(tok, THRESHOLD, new bytes32[](0), deadline, sign65(phoneKey, digest));
    }

    function test_RevertWhen_ApprovalForAnotherAccount() public {
        _optIn(new bytes32[](0));
        // Bob guards too, with his own device; Alice's phone signed for Alice, Bob submits it as his.
        address bob = makeAddr("bob");
        registerDevice(deviceKey(2), IDeviceRegistry.DeviceKind.Tracker, bob);
        _setGuard(deviceKey(2), bob, THRESHOLD, new bytes32[](0));
        bytes memory sig = _signApproval(phoneKey, address(ledger), account, ETH, 5 ether, 0);
        address signer = _recovered(address(ledger), bob, 5 ether, 0, sig);
        vm.expectRevert(abi.encodeWithSelector(IWithdrawalGuard.NotAccountDevice.selector, bob, signer));
        vm.prank(bob);
        guard.approveWithdrawal(address(ledger), ETH, 5 ether, uint64(block.timestamp + 10 minutes), 0, sig);
    }

    function test_RevertWhen_ApprovalOnAnotherChain() public {
        _optIn(new bytes32[](0));
        bytes memory sig = _signApproval(phoneKey, address(ledger), account, ETH, 5 ether, 0);
        vm.chainId(block.chainid + 1);
        address signer = _recovered(address(ledger), account, 5 ether, 0, sig);
        vm.expectRevert(abi.encodeWithSelector(IWithdrawalGuard.NotAccountDevice.selector, account, signer));
        _approve(address(ledger), 5 ether, 0, sig);
    }

    function test_RevertWhen_ApprovalAtAnotherLedger() public {
        _optIn(new bytes32[](0));
        bytes memory sig = _signApproval(phoneKey, address(ledger), account, ETH, 5 ether, 0);
        address signer = _recovered(address(otherLedger), account, 5 ether, 0, sig);
        vm.expectRevert(abi.encodeWithSelector(IWithdrawalGuard.NotAccountDevice.selector, account, signer));
        _approve(address(otherLedger), 5 ether, 0, sig);
        // Recorded for one ledger, it lets nothing leave the other.
        _approve(address(ledger), 5 ether, 0, sig);
        otherLedger.credit{value: 5 ether}(account);
        vm.expectRevert(
            abi.encodeWithSelector(IWithdrawalGuard.DeviceApprovalRequired.selector, ETH, account, 5 ether, THRESHOLD)
        );
        vm.prank(account);
        otherLedger.withdraw(ETH);
    }

    function test_ApprovalDigestIsTheProductsOwnDomain() public view {
        bytes32 structHash = keccak256(
            abi.encode(guard.WITHDRAWAL_APPROVAL_TYPEHASH(), account, ETH, 5 ether, uint256(3), uint64(9), bytes32(0))
        );
        (, string memory name, string memory version, uint256 chainId, address verifying,,) = escrow.eip712Domain();
        assertEq(
            guard.hashWithdrawalApproval(address(escrow), account, ETH, 5 ether, 3, 9, 0),
            digestUnder(name, version, chainId, verifying, structHash)
        );
    }

    // ---------------------------------------------------------------- rotation and revocation

    function test_RevertWhen_RevokedDeviceApproves() public {
        _optIn(new bytes32[](0));
        bytes memory sig = _signApproval(phoneKey, address(ledger), account, ETH, 5 ether, 0);
        vm.prank(account);
        registry.revoke(phone);
        vm.expectRevert(abi.encodeWithSelector(IWithdrawalGuard.NotAccountDevice.selector, account, phone));
        _approve(address(ledger), 5 ether, 0, sig);
    }

    function test_RevertWhen_RecordedApprovalUsedAfterRevocation() public {
        _optIn(new bytes32[](0));
        ledger.credit{value: 5 ether}(account);
        _approve(
            address(ledger), 5 ether, 0, _signApproval(phoneKey, address(ledger), account, ETH, 5 ether, 0)
        );
        vm.prank(account);
        registry.revoke(phone);
        vm.expectRevert(
            abi.encodeWithSelector(IWithdrawalGuard.DeviceApprovalRequired.selector, ETH, account, 5 ether, THRESHOLD)
        );
        vm.prank(account);
        ledger.withdraw(ETH);
    }

    function test_RevertWhen_RotatedOutKeyApproves() public {
        _optIn(new bytes32[](0));
        bytes memory sig = _signApproval(phoneKey, address(ledger), account, ETH, 5 ether, 0);
        rotate(phone, deviceKey(3), account);
        vm.expectRevert(abi.encodeWithSelector(IWithdrawalGuard.NotAccountDevice.selector, account, phone));
        _approve(address(ledger), 5 ether, 0, sig);
        // The device's new key approves ledgerAt once.
        _approve(address(ledger), 5 ether, 0, _signApproval(deviceKey(3), address(ledger), account, ETH, 5 ether, 0));
    }

    function test_RevertWhen_SomeoneElsesDeviceApproves() public {
        _optIn(new bytes32[](0));
        address theirs = registerDevice(deviceKey(4), IDeviceRegistry.DeviceKind.Tracker, makeAddr("neighbour"));
        bytes memory sig = _signApproval(deviceKey(4), address(ledger), account, ETH, 5 ether, 0);
        vm.expectRevert(abi.encodeWithSelector(IWithdrawalGuard.NotAccountDevice.selector, account, theirs));
        _approve(address(ledger), 5 ether, 0, sig);
    }

    // ---------------------------------------------------------------- location

    function test_ApprovalInsideAllowedCell() public {
        _optIn(_cells("u4pru"));
        bytes32 here = bytes32(bytes("u4pruydqq"));
        _approve(address(ledger), 5 ether, here, _signApproval(phoneKey, address(ledger), account, ETH, 5 ether, here));
        (uint256 amount,) = guard.approvalAt(address(ledger), account, ETH);
        assertEq(amount, 5 ether);
    }

    function test_RevertWhen_ApprovalOutsideAllowedCells() public {
        _optIn(_cells("u4pru"));
        bytes32 there = bytes32(bytes("u4prvydqq"));
        bytes memory sig = _signApproval(phoneKey, address(ledger), account, ETH, 5 ether, there);
        vm.expectRevert(abi.encodeWithSelector(IWithdrawalGuard.OutsideAllowedCells.selector, account, there));
        _approve(address(ledger), 5 ether, there, sig);
    }

    function testFuzz_LocationInsideCellIffPrefix(bytes32 location, uint8 length) public {
        uint256 len = bound(length, 1, 12);
        bytes32 cell = bytes32(bytes("s00twy01mtw0"));
        cell &= bytes32(type(uint256).max << (256 - 8 * len));
        bytes32[] memory cells = new bytes32[](1);
        cells[0] = cell;
        _optIn(cells);
        bool inside = true;
        for (uint256 i = 0; i < len; ++i) {
            if (location[i] != cell[i]) inside = false;
        }
        bytes memory sig = _signApproval(phoneKey, address(ledger), account, ETH, 5 ether, location);
        if (!inside) {
            vm.expectRevert(abi.encodeWithSelector(IWithdrawalGuard.OutsideAllowedCells.selector, account, location));
        }
        _approve(address(ledger), 5 ether, location, sig);
    }

    function test_RevertWhen_EmptyCellWouldAllowEverywhere() public {
        bytes32[] memory cells = new bytes32[](2);
        cells[0] = bytes32(bytes("u4pru"));
        uint64 deadline = uint64(block.timestamp + 1 hours);
        bytes32 digest = guard.hashGuardUpdate(account, ETH, true, THRESHOLD, cells, 0, deadline);
        vm.expectRevert(abi.encodeWithSelector(IWithdrawalGuard.BadCells.selector, 2));
        vm.prank(account);
        guard.setGuard(ETH, THRESHOLD, cells, deadline, sign65(phoneKey, digest));
    }

    // ---------------------------------------------------------------- opting out and recovery

    function test_OptOutWithTheDevice() public {
        _optIn(new bytes32[](0));
        uint64 deadline = uint64(block.timestamp + 1 hours);
        bytes32 digest = guard.hashGuardUpdate(account, ETH, false, 0, new bytes32[](0), guard.nonces(account), deadline);
        vm.startPrank(account);
        guard.clearGuard(ETH, deadline, sign65(phoneKey, digest));
        ledger.setWithdrawalGuard(ETH, address(0));
        vm.stopPrank();
        ledger.credit{value: 5 ether}(account);
        vm.prank(account);
        assertEq(ledger.withdraw(ETH), 5 ether);
        assertEq(ledger.withdrawalGuardOf(ETH, account), address(0));
    }

    function test_RecoveryClearsOnlyAfterTheDelay() public {
        _optIn(new bytes32[](0));
        vm.prank(account);
        guard.startRecovery(ETH);
        uint64 readyAt = uint64(block.timestamp) + guard.RECOVERY_DELAY();
        vm.warp(readyAt - 1);
        vm.expectRevert(
            abi.encodeWithSelector(IWithdrawalGuard.RecoveryNotReady.selector, account, ETH, readyAt, readyAt - 1)
        );
        vm.prank(account);
        guard.finishRecovery(ETH);
        vm.warp(readyAt);
        vm.startPrank(account);
        guard.finishRecovery(ETH);
        ledger.setWithdrawalGuard(ETH, address(0));
        vm.stopPrank();
        assertTrue(guard.released(account, ETH));
    }

    function test_DeviceCancelsARecoveryStartedByAThief() public {
        _optIn(new bytes32[](0));
        vm.prank(account);
        guard.startRecovery(ETH);
        vm.expectEmit(address(guard));
        emit IWithdrawalGuard.GuardRecoveryCancelled(account, ETH);
        _approve(address(ledger), 5 ether, 0, _signApproval(phoneKey, address(ledger), account, ETH, 5 ether, 0));
        vm.warp(block.timestamp + guard.RECOVERY_DELAY());
        vm.expectRevert(
            abi.encodeWithSelector(IWithdrawalGuard.RecoveryNotReady.selector, account, ETH, 0, block.timestamp)
        );
        vm.prank(account);
        guard.finishRecovery(ETH);
    }
}
