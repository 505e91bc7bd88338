// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "forge-std/Test.sol";

import {DeviceRegistry} from "../../../contracts/DeviceRegistry.sol";
import {WithdrawalGuard} from "../../../contracts/WithdrawalGuard.sol";
import {IDeviceRegistry} from "../../../contracts/interfaces/IDeviceRegistry.sol";
import {LedgerHarness} from "../utils/LedgerHarness.sol";

/// @dev A thief holds a guarded account's key and tries, in any order, between credits arriving, the owner's device
/// approving and time passing, to take money: withdrawing, starting and finishing a recovery, dropping the guard at
/// the ledger. The ghost counts what left without a device approval since the device last acted.
contract GuardHandler is Test {
    address internal constant ETH = address(0);
    uint256 public constant THRESHOLD = 1 ether;

    LedgerHarness public ledger;
    WithdrawalGuard public guard;
    DeviceRegistry public registry;
    address public account;
    uint256 public phoneKey;

    /// @dev Taken with the account key alone since the device's last approval.
    uint256 public ghostTakenAlone;
    uint256 public ghostMaxTakenAlone;
    uint256 public ghostCredited;
    uint256 public ghostWithdrawn;
    bool public recoveryFinished;

    constructor(LedgerHarness ledger_, WithdrawalGuard guard_, DeviceRegistry registry_, address account_, uint256 key_)
    {
        ledger = ledger_;
        guard = guard_;
        registry = registry_;
        account = account_;
        phoneKey = key_;
    }

    function credit(uint96 amount) external {
        uint256 value = bound(uint256(amount), 1, 3 ether);
        vm.deal(address(this), value);
        ledger.credit{value: value}(account);
        ghostCredited += value;
    }

    function thiefWithdraws() external {
        uint256 before = account.balance;
        vm.prank(account);
        try ledger.withdraw(ETH) {
            uint256 taken = account.balance - before;
            ghostWithdrawn += taken;
            if (!recoveryFinished) ghostTakenAlone += taken;
            if (ghostTakenAlone > ghostMaxTakenAlone) ghostMaxTakenAlone = ghostTakenAlone;
        } catch {}
    }

    function thiefDropsTheGuard() external {
        vm.prank(account);
        try ledger.setWithdrawalGuard(ETH, address(0)) {} catch {}
    }

    function thiefStartsRecovery() external {
        vm.prank(account);
        try guard.startRecovery(ETH) {} catch {}
    }

    function thiefFinishesRecovery() external {
        vm.prank(account);
        try guard.finishRecovery(ETH) {
            recoveryFinished = true;
        } catch {}
    }

    function ownerApprovesAndWithdraws() external {
        uint256 amount = ledger.withdrawable(ETH, account);
        if (amount == 0 || recoveryFinished) return;
        uint64 deadline = uint64(block.timestamp + 10 minutes);
        bytes32 digest =
            guard.hashWithdrawalApproval(address(ledger), account, ETH, amount, guard.nonces(account), deadline, 0);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(phoneKey, digest);
        vm.startPrank(account);
        guard.approveWithdrawal(address(ledger), ETH, amount, deadline, 0, abi.encodePacked(r, s, v));
        ledger.withdraw(ETH);
        vm.stopPrank();
        ghostWithdrawn += amount;
        ghostTakenAlone = 0;
    }

    function timePasses(uint32 seconds_) external {
        vm.warp(block.timestamp + bound(uint256(seconds_), 1, 3 days));
    }
}

contract WithdrawalGuardInvariants is Test {
    GuardHandler internal handler;
    LedgerHarness internal ledger;
    WithdrawalGuard internal guard;

    function setUp() public {
        vm.warp(1_764_340_000);
        DeviceRegistry registry = new DeviceRegistry();
        guard = new WithdrawalGuard(registry);
        ledger = new LedgerHarness();
        address account = makeAddr("account");
        uint256 phoneKey = 0xB0B;
        address phone = vm.addr(phoneKey);
        uint64 deadline = uint64(block.timestamp + 1 hours);
        bytes32 registration = registry.hashRegistration(
            phone, account, IDeviceRegistry.DeviceKind.Tracker, bytes32(0), deadline
        );
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(phoneKey, registration);
        vm.prank(account);
        registry.register(phone, IDeviceRegistry.DeviceKind.Tracker, bytes32(0), deadline, abi.encodePacked(r, s, v));
        bytes32 update = guard.hashGuardUpdate(account, address(0), true, 1 ether, new bytes32[](0), 0, deadline);
        (v, r, s) = vm.sign(phoneKey, update);
        vm.startPrank(account);
        guard.setGuard(address(0), 1 ether, new bytes32[](0), deadline, abi.encodePacked(r, s, v));
        ledger.setWithdrawalGuard(address(0), address(guard));
        vm.stopPrank();

        handler = new GuardHandler(ledger, guard, registry, account, phoneKey);
        targetContract(address(handler));
    }

    /// @dev The account key alone never takes more than the threshold between two device approvals, unless the
    /// owner let a 7-day recovery run to its end.
    function invariant_KeyAloneTakesAtMostTheThreshold() public view {
        assertLe(handler.ghostMaxTakenAlone(), handler.THRESHOLD());
    }

    /// @dev While the guard stands, the ledger still sends the account's withdrawals through it.
    function invariant_TheLedgerKeepsTheGuardWhileItStands() public view {
        if (!guard.released(handler.account(), address(0))) {
            assertEq(ledger.withdrawalGuardOf(address(0), handler.account()), address(guard));
        }
    }

    /// @dev Nothing is lost: what was credited is withdrawn or still credited, and the ledger holds the credits.
    function invariant_MoneyIsConserved() public view {
        uint256 left = ledger.withdrawable(address(0), handler.account());
        assertEq(handler.ghostCredited(), handler.ghostWithdrawn() + left);
        assertEq(address(ledger).balance, left);
        assertEq(ledger.credited(address(0)), left);
    }
}
