// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "forge-std/Test.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";

import {DeliveryEscrow} from "../../../contracts/DeliveryEscrow.sol";
import {DeviceRegistry} from "../../../contracts/DeviceRegistry.sol";
import {LoanBook} from "../../../contracts/LoanBook.sol";
import {IDeliveryEscrow} from "../../../contracts/interfaces/IDeliveryEscrow.sol";
import {IDeviceRegistry} from "../../../contracts/interfaces/IDeviceRegistry.sol";
import {ILoanBook} from "../../../contracts/interfaces/ILoanBook.sol";
import {BlocklistToken} from "../utils/LoanFixture.sol";

/// @dev Drives three loans through payouts (plain transfers standing in for insurance payouts, and real escrow
/// releases to the payout account), sweeps, direct repayments, payees the token blocks and unblocks, credit
/// withdrawals and time jumps, keeping ghost totals of every unit that moved.
contract LoanHandler is Test {
    LoanBook public book;
    DeliveryEscrow public escrow;
    BlocklistToken public token;
    uint256 public immutable trackerKey;
    address public constant INSURER = address(0x1A5);
    address public constant PAYER = address(0x9A7);
    address public constant BUYER = address(0xB0);
    bytes32 internal constant DEST = bytes32("market");

    uint256[] public ids;
    mapping(uint256 loanId => uint256) public ghostArrived;
    mapping(uint256 loanId => uint256) public ghostSweptToLender;
    mapping(uint256 loanId => uint256) public ghostForwarded;
    mapping(uint256 loanId => uint256) public ghostDirect;
    uint256 public sweeps;
    uint256 public dirtyAfterSweep;

    constructor(LoanBook book_, DeliveryEscrow escrow_, BlocklistToken token_, uint256 trackerKey_) {
        book = book_;
        escrow = escrow_;
        token = token_;
        trackerKey = trackerKey_;
    }

    function addLoan(uint256 loanId) external {
        ids.push(loanId);
    }

    function idsLength() external view returns (uint256) {
        return ids.length;
    }

    function _loan(uint256 seed) internal view returns (uint256 id, ILoanBook.Loan memory l) {
        id = ids[seed % ids.length];
        l = book.loanOf(id);
    }

    /// @dev An insurer (or anyone) pushes a payout straight to the account.
    function payDirect(uint256 seed, uint256 amount) external {
        (uint256 id, ILoanBook.Loan memory l) = _loan(seed);
        amount = bound(amount, 1, 1e24);
        token.mint(INSURER, amount);
        vm.prank(INSURER);
        assertTrue(token.transfer(l.account, amount));
        ghostArrived[id] += amount;
    }

    /// @dev A real escrow with the account as seller is released by the tracker's signed delivery.
    function payViaEscrow(uint256 seed, uint256 amount) external {
        (uint256 id, ILoanBook.Loan memory l) = _loan(seed);
        amount = bound(amount, 1, 1e24);
        token.mint(BUYER, amount);
        vm.startPrank(BUYER);
        token.approve(address(escrow), amount);
        uint256 escrowId = escrow.createEscrow(
            l.account, vm.addr(trackerKey), address(token), amount, DEST, uint64(block.timestamp + 1 days), 0, 0
        );
        vm.stopPrank();
        uint64 ts = uint64(block.timestamp);
        (bytes32 r, bytes32 vs) = vm.signCompact(trackerKey, escrow.hashDelivery(escrowId, 1, ts, DEST, 0));
        escrow.confirmDelivery(IDeliveryEscrow.SignedDelivery(escrowId, 1, ts, DEST, 0, r, vs));
        ghostArrived[id] += amount;
    }

    function sweep(uint256 seed, bool fromEscrow) external {
        (uint256 id, ILoanBook.Loan memory l) = _loan(seed);
        address[] memory sources = new address[](fromEscrow ? 1 : 0);
        if (fromEscrow) sources[0] = address(escrow);
        try book.sweep(id, sources) returns (uint256 repaid, uint256 forwarded) {
            ++sweeps;
            ghostSweptToLender[id] += repaid;
            ghostForwarded[id] += forwarded;
            if (token.balanceOf(l.account) != 0) ++dirtyAfterSweep;
        } catch {}
    }

    function repay(uint256 seed, uint256 amount) external {
        (uint256 id,) = _loan(seed);
        amount = bound(amount, 1, 1e24);
        token.mint(PAYER, amount);
        vm.startPrank(PAYER);
        token.approve(address(book), amount);
        try book.repay(id, amount) returns (uint256 paid) {
            ghostDirect[id] += paid;
        } catch {}
        token.approve(address(book), 0);
        vm.stopPrank();
    }

    /// @dev The token starts or stops refusing a lender or borrower (sweeps then credit them instead).
    function setBlocked(uint256 seed, bool lenderSide, bool on) external {
        (, ILoanBook.Loan memory l) = _loan(seed);
        token.setBlocked(lenderSide ? l.lender : l.borrower, on);
    }

    function withdrawCredit(uint256 seed, bool lenderSide) external {
        (, ILoanBook.Loan memory l) = _loan(seed);
        vm.prank(lenderSide ? l.lender : l.borrower);
        try book.withdraw(address(token)) {} catch {}
    }

    function warp(uint32 secondsAhead) external {
        vm.warp(block.timestamp + bound(secondsAhead, 0, 30 days));
    }
}

/// forge-config: default.invariant.runs = 16
/// forge-config: default.invariant.depth = 48
/// forge-config: ci.invariant.runs = 64
/// forge-config: ci.invariant.depth = 64
contract LoanBookInvariantsTest is Test {
    DeviceRegistry internal registry;
    DeliveryEscrow internal escrow;
    LoanBook internal book;
    BlocklistToken internal token;
    LoanHandler internal handler;

    uint256 internal constant TRACKER_KEY = 0x7AC4E2;

    function setUp() public {
        vm.warp(1_764_340_000);
        registry = new DeviceRegistry();
        escrow = new DeliveryEscrow(registry);
        book = new LoanBook();
        token = new BlocklistToken();
        handler = new LoanHandler(book, escrow, token, TRACKER_KEY);
        _registerTracker();

        uint16[3] memory shares = [uint16(2_500), 5_000, 10_000];
        uint256[3] memory principals = [uint256(1_000e18), 50e18, 7];
        uint256[3] memory repayments = [uint256(1_200e18), 50e18, 9];
        for (uint256 i = 0; i < 3; ++i) {
            address lender = address(uint160(0x1E00 + i));
            address borrower = address(uint160(0xB000 + i));
            token.mint(lender, principals[i]);
            vm.startPrank(lender);
            token.approve(address(book), principals[i]);
            uint256 id = book.offer(
                borrower,
                address(token),
                principals[i],
                repayments[i],
                shares[i],
                uint64(block.timestamp + 1 days),
                uint64(block.timestamp + 90 days)
            );
            vm.stopPrank();
            vm.prank(borrower);
            book.accept(id);
            handler.addLoan(id);
        }

        targetContract(address(handler));
        bytes4[] memory selectors = new bytes4[](7);
        selectors[0] = LoanHandler.payDirect.selector;
        selectors[1] = LoanHandler.payViaEscrow.selector;
        selectors[2] = LoanHandler.sweep.selector;
        selectors[3] = LoanHandler.repay.selector;
        selectors[4] = LoanHandler.setBlocked.selector;
        selectors[5] = LoanHandler.withdrawCredit.selector;
        selectors[6] = LoanHandler.warp.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    function _registerTracker() internal {
        address device = vm.addr(TRACKER_KEY);
        uint64 deadline = uint64(block.timestamp);
        bytes32 digest =
            registry.hashRegistration(device, address(this), IDeviceRegistry.DeviceKind.Tracker, 0, deadline);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(TRACKER_KEY, digest);
        registry.register(device, IDeviceRegistry.DeviceKind.Tracker, 0, deadline, abi.encodePacked(r, s, v));
    }

    function _received(address who) internal view returns (uint256) {
        return token.balanceOf(who) + book.withdrawable(address(token), who);
    }

    /// @dev The debt is never overpaid; a loan is Repaid exactly when repaid reaches the debt.
    function invariant_RepaidNeverExceedsDebt() public view {
        for (uint256 i = 0; i < handler.idsLength(); ++i) {
            uint256 id = handler.ids(i);
            ILoanBook.Loan memory l = book.loanOf(id);
            assertLe(l.repaid, l.repayment, "repaid <= repayment");
            assertEq(l.status == ILoanBook.LoanStatus.Repaid, l.repaid == l.repayment, "Repaid iff fully paid");
            assertEq(book.outstanding(id), l.status == ILoanBook.LoanStatus.Active ? l.repayment - l.repaid : 0);
        }
    }

    /// @dev The lender receives (in hand or as a pull credit) exactly the sum of Repaid amounts.
    function invariant_LenderReceivesExactlyRepaid() public view {
        for (uint256 i = 0; i < handler.idsLength(); ++i) {
            uint256 id = handler.ids(i);
            ILoanBook.Loan memory l = book.loanOf(id);
            uint256 repaidSum = handler.ghostSweptToLender(id) + handler.ghostDirect(id);
            assertEq(l.repaid, repaidSum, "recorded = sum of Repaid");
            assertEq(_received(l.lender), repaidSum, "lender got exactly the sum of Repaid");
        }
    }

    /// @dev Lender + borrower receive exactly what arrived for the loan (payouts + direct repayments), less
    /// what still waits in the account or as the account's escrow credit. Nothing is created or lost.
    function invariant_EverythingThatArrivedIsDelivered() public view {
        uint256 credits = 0;
        for (uint256 i = 0; i < handler.idsLength(); ++i) {
            uint256 id = handler.ids(i);
            ILoanBook.Loan memory l = book.loanOf(id);
            uint256 borrowerGot = _received(l.borrower) - l.principal;
            assertEq(borrowerGot, handler.ghostForwarded(id), "borrower got exactly the sum of Forwarded");
            uint256 waiting = token.balanceOf(l.account) + escrow.withdrawable(address(token), l.account);
            assertEq(
                _received(l.lender) + borrowerGot + waiting,
                handler.ghostArrived(id) + handler.ghostDirect(id),
                "conservation per loan"
            );
            credits += book.withdrawable(address(token), l.lender) + book.withdrawable(address(token), l.borrower);
        }
        assertEq(token.balanceOf(address(book)), credits, "the book holds exactly the pull credits");
    }

    /// @dev Whoever sweeps, whenever, with whatever sources: the lender's share equals the share of everything swept
    /// while the loan was active, capped at the debt (loans that also took direct repayments are covered by the
    /// conservation invariant instead, since the parties' own order of acts moves the cap).
    function invariant_ShareDoesNotDependOnHowSweepsSplitArrivals() public view {
        for (uint256 i = 0; i < handler.idsLength(); ++i) {
            uint256 id = handler.ids(i);
            if (handler.ghostDirect(id) != 0) continue;
            ILoanBook.Loan memory l = book.loanOf(id);
            uint256 share = Math.mulDiv(l.swept, l.shareBps, 10_000);
            assertEq(handler.ghostSweptToLender(id), Math.min(share, l.repayment), "share of the running total");
        }
    }

    /// @dev Obligations per token: the book's balance covers every credit and every principal it holds for offered
    /// loans, and the credit total is the sum of the credits.
    function invariant_BalanceCoversObligationsPerToken() public view {
        assertGe(
            token.balanceOf(address(book)),
            book.credited(address(token)) + book.principalHeld(address(token)),
            "balance >= credits + principals held"
        );
    }

    /// @dev Every successful sweep left the account with no loan token.
    function invariant_AccountEmptyAfterSweep() public view {
        assertEq(handler.dirtyAfterSweep(), 0, "account empty after every sweep");
    }

    /// @dev The handler reaches sweeps through escrows, credits for blocked payees, full repayment.
    function test_HandlerReachesEveryOutcome() public {
        handler.payViaEscrow(0, 400e18);
        handler.setBlocked(0, true, true);
        handler.sweep(0, true); // 100 credited to the blocked lender, 300 forwarded
        uint256 id0 = handler.ids(0);
        assertEq(book.withdrawable(address(token), book.loanOf(id0).lender), 100e18);
        handler.setBlocked(0, true, false);
        handler.withdrawCredit(0, true);
        handler.payDirect(2, 100);
        handler.sweep(2, false); // share 100 %: 9 repaid, 91 forwarded
        assertEq(uint8(book.loanOf(handler.ids(2)).status), uint8(ILoanBook.LoanStatus.Repaid));
        handler.repay(1, 1e24);
        assertEq(handler.ghostDirect(handler.ids(1)), 50e18);
        assertEq(handler.sweeps(), 2);
        invariant_RepaidNeverExceedsDebt();
        invariant_LenderReceivesExactlyRepaid();
        invariant_EverythingThatArrivedIsDelivered();
        invariant_AccountEmptyAfterSweep();
    }
}
