// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";

import {DeliveryEscrow} from "../../contracts/DeliveryEscrow.sol";
import {PayoutAccount} from "../../contracts/PayoutAccount.sol";
import {ILoanBook} from "../../contracts/interfaces/ILoanBook.sol";
import {ICommonErrors} from "../../contracts/interfaces/ICommonErrors.sol";
import {IPullPayments} from "../../contracts/interfaces/IPullPayments.sol";
import {TestToken} from "../../contracts/test/TestToken.sol";
import {
    FalseReturningToken, FeeOnTransferToken, ReentrantToken, RevertingToken, SelectiveLiarToken
} from "./utils/Hostile.sol";
import {BlocklistToken, HostileSource, LoanFixture} from "./utils/LoanFixture.sol";

contract LoanBookTest is LoanFixture {
    uint256 internal trackerKey = deviceKey(70);

    // ---------------------------------------------------------------- offer

    function test_Offer_EscrowsPrincipalAndRecordsTerms() public {
        uint64 acceptBy = uint64(block.timestamp + ACCEPT_WINDOW);
        uint64 dueBy = uint64(block.timestamp + TERM);
        token.mint(lender, PRINCIPAL);
        vm.startPrank(lender);
        token.approve(address(book), PRINCIPAL);
        vm.expectEmit(address(book));
        emit ILoanBook.LoanOffered(1, lender, borrower, address(token), PRINCIPAL, REPAYMENT, SHARE, acceptBy, dueBy);
        uint256 id = book.offer(borrower, address(token), PRINCIPAL, REPAYMENT, SHARE, acceptBy, dueBy);
        vm.stopPrank();

        assertEq(id, 1);
        assertEq(token.balanceOf(address(book)), PRINCIPAL, "principal held by the book");
        assertEq(token.balanceOf(lender), 0);
        ILoanBook.Loan memory l = book.loanOf(id);
        assertEq(l.lender, lender);
        assertEq(l.borrower, borrower);
        assertEq(l.token, address(token));
        assertEq(l.principal, PRINCIPAL);
        assertEq(l.repayment, REPAYMENT);
        assertEq(l.shareBps, SHARE);
        assertEq(l.acceptBy, acceptBy);
        assertEq(l.dueBy, dueBy);
        assertEq(uint8(l.status), uint8(ILoanBook.LoanStatus.Offered));
        assertEq(l.account, address(0), "no account before acceptance");
        assertEq(book.outstanding(id), 0, "nothing owed before acceptance");
    }

    function _offer(address borrower_, address tok, uint256 p, uint256 r, uint16 s, uint64 a, uint64 d) internal {
        vm.prank(lender);
        book.offer(borrower_, tok, p, r, s, a, d);
    }

    function test_RevertWhen_OfferHasZeroAddress() public {
        uint64 a = uint64(block.timestamp + 1);
        vm.expectRevert(ICommonErrors.ZeroAddress.selector);
        _offer(address(0), address(token), 1, 1, 1, a, a + 1);
        vm.expectRevert(ICommonErrors.ZeroAddress.selector);
        _offer(borrower, address(0), 1, 1, 1, a, a + 1);
    }

    function test_RevertWhen_OfferHasZeroPrincipal() public {
        uint64 a = uint64(block.timestamp + 1);
        vm.expectRevert(ICommonErrors.ZeroAmount.selector);
        _offer(borrower, address(token), 0, 1, 1, a, a + 1);
    }

    function test_RevertWhen_RepaymentBelowPrincipal() public {
        uint64 a = uint64(block.timestamp + 1);
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.RepaymentBelowPrincipal.selector, 100, 99));
        _offer(borrower, address(token), 100, 99, 1, a, a + 1);
    }

    function test_RevertWhen_ShareOutOfRange() public {
        uint64 a = uint64(block.timestamp + 1);
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.InvalidShare.selector, 0));
        _offer(borrower, address(token), 1, 1, 0, a, a + 1);
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.InvalidShare.selector, 10_001));
        _offer(borrower, address(token), 1, 1, 10_001, a, a + 1);
    }

    function test_RevertWhen_DatesInvalid() public {
        uint64 nowTs = uint64(block.timestamp);
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.InvalidDates.selector, nowTs - 1, nowTs + 10, nowTs));
        _offer(borrower, address(token), 1, 1, 1, nowTs - 1, nowTs + 10);
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.InvalidDates.selector, nowTs + 10, nowTs + 10, nowTs));
        _offer(borrower, address(token), 1, 1, 1, nowTs + 10, nowTs + 10);
    }

    function test_RevertWhen_OfferTokenTakesAFee() public {
        FeeOnTransferToken fee = new FeeOnTransferToken();
        fee.mint(lender, 1_000);
        vm.startPrank(lender);
        fee.approve(address(book), 1_000);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.WrongValue.selector, 1_000, 990));
        book.offer(borrower, address(fee), 1_000, 1_000, SHARE, uint64(block.timestamp + 1), uint64(block.timestamp + 2));
        vm.stopPrank();
    }

    function test_RevertWhen_OfferTokenReturnsFalse() public {
        FalseReturningToken liar = new FalseReturningToken();
        liar.mint(lender, 1_000);
        liar.setLying(true);
        vm.startPrank(lender);
        liar.approve(address(book), 1_000);
        vm.expectRevert(abi.encodeWithSelector(SafeERC20.SafeERC20FailedOperation.selector, address(liar)));
        book.offer(borrower, address(liar), 1_000, 1_000, SHARE, uint64(block.timestamp + 1), uint64(block.timestamp + 2));
        vm.stopPrank();
    }

    // ---------------------------------------------------------------- cancel

    function test_CancelOffer_LenderGetsPrincipalBack() public {
        uint256 id = offerLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        vm.expectEmit(address(book));
        emit ILoanBook.LoanCancelled(id);
        vm.prank(lender);
        book.cancelOffer(id);
        assertEq(token.balanceOf(lender), PRINCIPAL);
        assertEq(token.balanceOf(address(book)), 0);
        assertLoan(id, ILoanBook.LoanStatus.Cancelled, 0);
    }

    function test_CancelOffer_BorrowerDeclines() public {
        uint256 id = offerLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        vm.prank(borrower);
        book.cancelOffer(id);
        assertEq(token.balanceOf(lender), PRINCIPAL, "principal back to the lender, not the borrower");
        assertEq(token.balanceOf(borrower), 0);
    }

    function test_CancelOffer_AnyoneOnceExpired() public {
        uint256 id = offerLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        vm.warp(block.timestamp + ACCEPT_WINDOW + 1);
        vm.prank(stranger);
        book.cancelOffer(id);
        assertEq(token.balanceOf(lender), PRINCIPAL);
    }

    function test_RevertWhen_StrangerCancelsLiveOffer() public {
        uint256 id = offerLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        vm.warp(block.timestamp + ACCEPT_WINDOW); // acceptBy itself is still live
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.NotAllowedToCancel.selector, id, stranger));
        vm.prank(stranger);
        book.cancelOffer(id);
    }

    function test_RevertWhen_CancelAcceptedOrUnknownLoan() public {
        (uint256 id,) = openLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.WrongStatus.selector, id, ILoanBook.LoanStatus.Active));
        vm.prank(lender);
        book.cancelOffer(id);
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.UnknownLoan.selector, 99));
        book.cancelOffer(99);
    }

    // ---------------------------------------------------------------- accept

    function test_Accept_DeploysAccountAtPredictedAddressAndPaysPrincipal() public {
        uint256 id = offerLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        address predicted = book.accountOf(id);
        assertEq(predicted.code.length, 0);
        vm.expectEmit(address(book));
        emit ILoanBook.LoanAccepted(id, predicted);
        vm.prank(borrower);
        address account = book.accept(id);

        assertEq(account, predicted, "CREATE2 prediction holds");
        assertEq(PayoutAccount(payable(account)).LOAN_BOOK(), address(book));
        assertEq(account.code.length, 45, "an EIP-1167 minimal proxy");
        assertEq(token.balanceOf(borrower), PRINCIPAL, "borrower got the principal");
        assertEq(token.balanceOf(address(book)), 0);
        ILoanBook.Loan memory l = book.loanOf(id);
        assertEq(uint8(l.status), uint8(ILoanBook.LoanStatus.Active));
        assertEq(l.account, account);
        assertEq(book.outstanding(id), REPAYMENT);
    }

    function test_Accept_PayoutsSentBeforeAcceptanceAreSwept() public {
        uint256 id = offerLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        token.mint(book.accountOf(id), 400); // payee named from the offer on
        vm.prank(borrower);
        address account = book.accept(id);
        (uint256 repaid, uint256 forwarded) = book.sweep(id, noSources());
        assertEq(repaid, 200);
        assertEq(forwarded, 200);
        assertEq(token.balanceOf(account), 0);
    }

    function test_RevertWhen_StrangerAccepts() public {
        uint256 id = offerLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.NotBorrower.selector, id, stranger));
        vm.prank(stranger);
        book.accept(id);
    }

    function test_RevertWhen_AcceptAfterAcceptBy() public {
        uint256 id = offerLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        uint64 acceptBy = book.loanOf(id).acceptBy;
        vm.warp(acceptBy + 1);
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.OfferExpired.selector, id, acceptBy, acceptBy + 1));
        vm.prank(borrower);
        book.accept(id);
    }

    function test_RevertWhen_AcceptTwiceOrCancelled() public {
        (uint256 id,) = openLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.WrongStatus.selector, id, ILoanBook.LoanStatus.Active));
        vm.prank(borrower);
        book.accept(id);

        uint256 id2 = offerLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        vm.prank(lender);
        book.cancelOffer(id2);
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.WrongStatus.selector, id2, ILoanBook.LoanStatus.Cancelled));
        vm.prank(borrower);
        book.accept(id2);
    }

    // ---------------------------------------------------------------- sweep

    function test_Sweep_SplitsEachPayoutByShare() public {
        (uint256 id, address account) = openLoan(address(token), PRINCIPAL, REPAYMENT, 2_500);
        token.mint(account, 400e18);
        vm.expectEmit(address(book));
        emit ILoanBook.Repaid(id, 100e18, REPAYMENT - 100e18);
        vm.expectEmit(address(book));
        emit ILoanBook.Forwarded(id, borrower, 300e18);
        vm.prank(stranger);
        (uint256 repaid, uint256 forwarded) = book.sweep(id, noSources());
        assertEq(repaid, 100e18);
        assertEq(forwarded, 300e18);
        assertEq(token.balanceOf(lender), 100e18, "lender got the share");
        assertEq(token.balanceOf(borrower), PRINCIPAL + 300e18, "borrower got the rest");
        assertEq(token.balanceOf(account), 0, "account empty after a sweep");
        assertLoan(id, ILoanBook.LoanStatus.Active, 100e18);
        assertEq(book.outstanding(id), REPAYMENT - 100e18);
    }

    function test_Sweep_CapsAtOutstandingAndMarksRepaid() public {
        (uint256 id, address account) = openLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        token.mint(account, 2_000e18); // share = 1000, outstanding = 1100
        book.sweep(id, noSources());
        assertLoan(id, ILoanBook.LoanStatus.Active, 1_000e18);

        vm.warp(block.timestamp + 3 days);
        token.mint(account, 1_000e18); // share = 500, only 100 owed
        vm.expectEmit(address(book));
        emit ILoanBook.Repaid(id, 100e18, 0);
        vm.expectEmit(address(book));
        emit ILoanBook.LoanRepaid(id);
        vm.expectEmit(address(book));
        emit ILoanBook.Forwarded(id, borrower, 900e18);
        (uint256 repaid, uint256 forwarded) = book.sweep(id, noSources());
        assertEq(repaid, 100e18);
        assertEq(forwarded, 900e18);
        assertEq(token.balanceOf(lender), REPAYMENT, "lender repaid exactly the debt");
        assertLoan(id, ILoanBook.LoanStatus.Repaid, REPAYMENT);
        assertEq(book.loanOf(id).repaidAt, block.timestamp);
        assertEq(book.outstanding(id), 0);
    }

    function test_Sweep_AfterRepaidForwardsEverything() public {
        (uint256 id, address account) = openLoan(address(token), 100, 100, MAX_SHARE);
        token.mint(account, 100);
        book.sweep(id, noSources());
        assertLoan(id, ILoanBook.LoanStatus.Repaid, 100);
        token.mint(account, 77);
        (uint256 repaid, uint256 forwarded) = book.sweep(id, noSources());
        assertEq(repaid, 0);
        assertEq(forwarded, 77);
        assertEq(token.balanceOf(lender), 100, "lender never gets more than the debt");
        assertEq(token.balanceOf(borrower), 100 + 77);
    }

    uint16 internal constant MAX_SHARE = 10_000;

    function test_Sweep_RoundsTheLenderShareDown() public {
        (uint256 id, address account) = openLoan(address(token), PRINCIPAL, REPAYMENT, 3_333);
        token.mint(account, 10); // 10 × 3333 / 10000 = 3.333
        (uint256 repaid, uint256 forwarded) = book.sweep(id, noSources());
        assertEq(repaid, 3);
        assertEq(forwarded, 7);
    }

    function test_Sweep_EmptyAccountMovesNothing() public {
        (uint256 id,) = openLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        vm.recordLogs();
        (uint256 repaid, uint256 forwarded) = book.sweep(id, noSources());
        assertEq(repaid + forwarded, 0);
        assertEq(vm.getRecordedLogs().length, 0, "no events for an empty sweep");
    }

    function test_RevertWhen_SweepUnknownOrOfferedLoan() public {
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.UnknownLoan.selector, 5));
        book.sweep(5, noSources());
        uint256 id = offerLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.WrongStatus.selector, id, ILoanBook.LoanStatus.Offered));
        book.sweep(id, noSources());
    }

    function test_RevertWhen_TooManySources() public {
        (uint256 id,) = openLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        address[] memory sources = new address[](33);
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.TooManySources.selector, 33, 32));
        book.sweep(id, sources);
    }

    function test_Sweep_CancelledLoanForwardsEverythingToBorrower() public {
        uint256 id = offerLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        address predicted = book.accountOf(id);
        token.mint(predicted, 500); // an escrow or insurer paid before the offer was cancelled
        vm.prank(lender);
        book.cancelOffer(id);
        (uint256 repaid, uint256 forwarded) = book.sweep(id, noSources());
        assertEq(repaid, 0);
        assertEq(forwarded, 500);
        assertEq(token.balanceOf(borrower), 500, "nothing stranded at the predicted address");
        assertEq(book.loanOf(id).account, predicted);
    }

    function test_Sweep_SkipsAFailingSource() public {
        (uint256 id, address account) = openLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        token.mint(account, 10);
        // The escrow has no credit for the account: its withdraw reverts with NothingToWithdraw.
        vm.expectEmit(address(book));
        emit ILoanBook.SourceFailed(id, address(escrow));
        (uint256 repaid, uint256 forwarded) = book.sweep(id, oneSource(address(escrow)));
        assertEq(repaid + forwarded, 10, "the rest of the sweep went on");
    }

    function test_Sweep_HostileSourcesCannotBlockIt() public {
        (uint256 id, address account) = openLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        token.mint(account, 100);
        HostileSource silent = new HostileSource(); // succeeds with no return data
        HostileSource bomb = new HostileSource();
        bomb.setMode(HostileSource.Mode.RevertWithHugeData);
        HostileSource reenter = new HostileSource();
        reenter.arm(address(book), abi.encodeCall(book.sweep, (id, noSources())));
        address[] memory sources = new address[](4);
        sources[0] = address(silent);
        sources[1] = address(bomb);
        sources[2] = address(reenter);
        sources[3] = stranger; // an EOA: the call succeeds and moves nothing

        vm.expectEmit(address(book));
        emit ILoanBook.SourceCollected(id, address(silent), 0);
        vm.expectEmit(address(book));
        emit ILoanBook.SourceFailed(id, address(bomb));
        vm.expectEmit(address(book));
        emit ILoanBook.SourceCollected(id, address(reenter), 0);
        vm.expectEmit(address(book));
        emit ILoanBook.SourceCollected(id, stranger, 0);
        (uint256 repaid, uint256 forwarded) = book.sweep(id, sources);
        assertEq(repaid, 50);
        assertEq(forwarded, 50);
        assertFalse(reenter.reentrySucceeded(), "re-entering sweep from a source is refused");
    }

    function test_Sweep_PayeeTheTokenRefusesIsCreditedInstead() public {
        BlocklistToken blk = new BlocklistToken();
        (uint256 id, address account) = openLoan(address(blk), PRINCIPAL, REPAYMENT, SHARE);
        blk.setBlocked(lender, true);
        blk.mint(account, 100);
        vm.expectEmit(address(book));
        emit IPullPayments.Credited(address(blk), lender, 50);
        (uint256 repaid, uint256 forwarded) = book.sweep(id, noSources());
        assertEq(repaid, 50);
        assertEq(forwarded, 50);
        assertEq(blk.balanceOf(borrower), PRINCIPAL + 50, "a blocked lender does not block the borrower");
        assertEq(book.withdrawable(address(blk), lender), 50);
        assertEq(blk.balanceOf(address(book)), 50);
        assertEq(blk.balanceOf(account), 0);

        blk.setBlocked(lender, false);
        vm.expectEmit(address(book));
        emit IPullPayments.Withdrawn(address(blk), lender, 50);
        vm.prank(lender);
        assertEq(book.withdraw(address(blk)), 50);
        assertEq(blk.balanceOf(lender), 50);
        assertEq(book.withdrawable(address(blk), lender), 0);
    }

    function test_Sweep_BlockedBorrowerDoesNotBlockTheLender() public {
        BlocklistToken blk = new BlocklistToken();
        (uint256 id, address account) = openLoan(address(blk), PRINCIPAL, REPAYMENT, SHARE);
        blk.setBlocked(borrower, true);
        blk.mint(account, 100);
        book.sweep(id, noSources());
        assertEq(blk.balanceOf(lender), 50);
        assertEq(book.withdrawable(address(blk), borrower), 50);
    }

    function test_RevertWhen_TokenRefusesEveryTransfer() public {
        RevertingToken rev = new RevertingToken();
        (uint256 id, address account) = openLoan(address(rev), PRINCIPAL, REPAYMENT, SHARE);
        rev.mint(account, 100);
        rev.setBroken(true);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.PaymentFailed.selector, address(rev), lender, 50));
        book.sweep(id, noSources());
        rev.setBroken(false);
        assertEq(rev.balanceOf(account), 100, "the payout waits in the account");
        book.sweep(id, noSources());
        assertEq(rev.balanceOf(lender), 50);
    }

    function test_RevertWhen_TokenLiesAboutTransfers() public {
        FalseReturningToken liar = new FalseReturningToken();
        (uint256 id, address account) = openLoan(address(liar), PRINCIPAL, REPAYMENT, SHARE);
        liar.mint(account, 100);
        liar.setLying(true);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.PaymentFailed.selector, address(liar), lender, 50));
        book.sweep(id, noSources());
        assertEq(book.loanOf(id).repaid, 0, "nothing recorded as repaid");
    }

    /// @dev A sweeper who splits the arrivals into many small sweeps must not round the lender's share down to
    /// nothing: the share is computed on the total swept since acceptance, so the remainders carry. Ten sweeps of one
    /// unit at 50 % repay 5 units, exactly what one sweep of ten repays.
    function test_Attack_SweepingInSmallSlicesCannotRoundDownTheLendersShare() public {
        (uint256 sliced, address slicedAccount) = openLoan(address(token), PRINCIPAL, REPAYMENT, 5_000);
        (uint256 whole, address wholeAccount) = openLoan(address(token), PRINCIPAL, REPAYMENT, 5_000);
        for (uint256 i = 0; i < 10; ++i) {
            token.mint(slicedAccount, 1);
            book.sweep(sliced, noSources());
        }
        token.mint(wholeAccount, 10);
        book.sweep(whole, noSources());
        assertEq(book.loanOf(whole).repaid, 5, "one sweep of 10 at 50 %");
        assertEq(book.loanOf(sliced).repaid, 5, "ten sweeps of 1 at 50 % repay the same");
    }

    /// @dev Property form: any split of the same arrivals into sweeps repays the same total.
    function testFuzz_SweepSplitDoesNotChangeRepayment(uint16 shareBps, uint64 a, uint64 b, uint64 c) public {
        shareBps = uint16(bound(shareBps, 1, 10_000));
        (uint256 sliced, address slicedAccount) = openLoan(address(token), PRINCIPAL, type(uint128).max, shareBps);
        (uint256 whole, address wholeAccount) = openLoan(address(token), PRINCIPAL, type(uint128).max, shareBps);
        uint64[3] memory parts = [a, b, c];
        for (uint256 i = 0; i < 3; ++i) {
            token.mint(slicedAccount, parts[i]);
            book.sweep(sliced, noSources());
        }
        token.mint(wholeAccount, uint256(a) + b + c);
        book.sweep(whole, noSources());
        assertEq(book.loanOf(sliced).repaid, book.loanOf(whole).repaid, "split changed the repayment");
    }

    /// @dev Scenario 6 of the trust review: the backing check compared the credit total with the whole token
    /// balance, which includes principals held for other offered loans. A token that refuses the push to the borrower
    /// and fakes the move of the credit into the book left the borrower a credit paid out of another lender's
    /// principal. The check now counts every obligation in the token.
    function test_Scenario6_CreditMustBeBackedBeyondPrincipalsHeldForOtherLoans() public {
        SelectiveLiarToken liar = new SelectiveLiarToken();
        (uint256 id, address account) = openLoan(address(liar), PRINCIPAL, REPAYMENT, SHARE);
        uint256 other = offerLoan(address(liar), PRINCIPAL, REPAYMENT, SHARE);
        assertEq(book.principalHeld(address(liar)), PRINCIPAL, "the other loan's principal waits in the book");
        liar.mint(account, 100);
        liar.setBlocked(borrower, true);
        liar.setPhantom(address(book), true);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.PaymentFailed.selector, address(liar), borrower, 50));
        book.sweep(id, noSources());
        assertEq(book.credited(address(liar)), 0, "no unbacked credit");
        // The other lender can still take the principal back in full.
        vm.prank(lender);
        book.cancelOffer(other);
        assertEq(liar.balanceOf(lender), PRINCIPAL, "principal returned");
        assertEq(book.principalHeld(address(liar)), 0);
    }

    function test_Sweep_ReentrantTokenCannotReenter() public {
        ReentrantToken re = new ReentrantToken();
        (uint256 id, address account) = openLoan(address(re), PRINCIPAL, REPAYMENT, SHARE);
        re.mint(account, 100);
        re.arm(address(book), abi.encodeCall(book.sweep, (id, noSources())));
        book.sweep(id, noSources());
        assertTrue(re.reentered());
        assertFalse(re.reentrySucceeded(), "nonReentrant refused the nested sweep");
        assertEq(re.balanceOf(lender), 50);
        assertEq(re.balanceOf(borrower), PRINCIPAL + 50);
        assertLoan(id, ILoanBook.LoanStatus.Active, 50);
    }

    // ---------------------------------------------------------------- integrations

    function test_Integration_EscrowReleaseToAccountIsSplit() public {
        (uint256 id, address account) = openLoan(address(token), PRINCIPAL, REPAYMENT, 2_000);
        // The borrower sells goods: the escrow's seller is the loan's payout account.
        releaseEscrowTo(trackerKey, account, address(token), 600e18);
        assertEq(escrow.withdrawable(address(token), account), 600e18, "escrow credited the account");

        vm.expectEmit(address(book));
        emit ILoanBook.SourceCollected(id, address(escrow), 600e18);
        vm.expectEmit(address(book));
        emit ILoanBook.Repaid(id, 120e18, REPAYMENT - 120e18);
        vm.expectEmit(address(book));
        emit ILoanBook.Forwarded(id, borrower, 480e18);
        vm.prank(relayer);
        book.sweep(id, oneSource(address(escrow)));

        assertEq(escrow.withdrawable(address(token), account), 0);
        assertEq(token.balanceOf(lender), 120e18);
        assertEq(token.balanceOf(borrower), PRINCIPAL + 480e18);
        assertEq(token.balanceOf(account), 0);
    }

    function test_Integration_InsurancePayoutTransferIsSplit() public {
        (uint256 id, address account) = openLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        // An insurer pushes a payout to the beneficiary (the account) with a plain ERC-20 transfer.
        address insurer = makeAddr("insurer");
        token.mint(insurer, 300e18);
        vm.prank(insurer);
        assertTrue(token.transfer(account, 300e18));
        book.sweep(id, noSources());
        assertEq(token.balanceOf(lender), 150e18);
        assertEq(token.balanceOf(borrower), PRINCIPAL + 150e18);
    }

    function test_Integration_RepaidFromSeveralEscrowsUntilDone() public {
        (uint256 id, address account) = openLoan(address(token), 100e18, 120e18, 5_000);
        for (uint256 i = 0; i < 3; ++i) {
            releaseEscrowTo(trackerKey, account, address(token), 100e18);
            book.sweep(id, oneSource(address(escrow)));
        }
        assertEq(token.balanceOf(lender), 120e18, "50 + 50 + 20 (capped)");
        assertEq(token.balanceOf(borrower), 100e18 + 180e18);
        assertLoan(id, ILoanBook.LoanStatus.Repaid, 120e18);
    }

    // ---------------------------------------------------------------- direct repayment

    function test_Repay_DirectlyToLenderCappedAtOutstanding() public {
        (uint256 id,) = openLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        token.mint(stranger, 5_000e18);
        vm.startPrank(stranger);
        token.approve(address(book), type(uint256).max);
        assertEq(book.repay(id, 100e18), 100e18);
        vm.expectEmit(address(book));
        emit ILoanBook.Repaid(id, REPAYMENT - 100e18, 0);
        vm.expectEmit(address(book));
        emit ILoanBook.LoanRepaid(id);
        assertEq(book.repay(id, 5_000e18), REPAYMENT - 100e18, "capped at outstanding");
        vm.stopPrank();
        assertEq(token.balanceOf(lender), REPAYMENT);
        assertEq(token.balanceOf(stranger), 5_000e18 - REPAYMENT);
        assertLoan(id, ILoanBook.LoanStatus.Repaid, REPAYMENT);
    }

    function test_RevertWhen_RepayZeroOrNotActive() public {
        (uint256 id,) = openLoan(address(token), 100, 100, SHARE);
        vm.expectRevert(ICommonErrors.ZeroAmount.selector);
        book.repay(id, 0);
        token.mint(address(this), 100);
        token.approve(address(book), 100);
        book.repay(id, 100);
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.WrongStatus.selector, id, ILoanBook.LoanStatus.Repaid));
        book.repay(id, 1);
    }

    // ---------------------------------------------------------------- other assets

    function test_Forward_OtherTokensAndEthGoToBorrower() public {
        (uint256 id, address account) = openLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        TestToken other = new TestToken();
        other.mint(account, 42);
        vm.deal(account, 1 ether);
        vm.expectEmit(address(book));
        emit ILoanBook.AssetForwarded(id, address(other), borrower, 42);
        assertEq(book.forward(id, address(other)), 42);
        assertEq(book.forward(id, address(0)), 1 ether);
        assertEq(other.balanceOf(borrower), 42);
        assertEq(borrower.balance, 1 ether);
        assertEq(book.loanOf(id).repaid, 0, "no repayment in another asset");
    }

    function test_ForwardFrom_PullsEthEscrowCredits() public {
        (uint256 id, address account) = openLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        releaseEscrowTo(trackerKey, account, address(0), 2 ether);
        assertEq(book.forwardFrom(id, address(0), oneSource(address(escrow))), 2 ether);
        assertEq(borrower.balance, 2 ether);
        assertEq(escrow.withdrawable(address(0), account), 0);
    }

    function test_RevertWhen_ForwardLoanToken() public {
        (uint256 id, address account) = openLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        token.mint(account, 100);
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.LoanTokenNeedsSweep.selector, id, address(token)));
        book.forward(id, address(token));
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.LoanTokenNeedsSweep.selector, id, address(token)));
        book.forwardFrom(id, address(token), oneSource(address(escrow)));
        assertEq(token.balanceOf(account), 100, "the lender's share cannot be bypassed");
    }

    function test_Forward_NothingReturnsZeroWithoutEvent() public {
        (uint256 id,) = openLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        vm.recordLogs();
        assertEq(book.forward(id, address(0)), 0);
        assertEq(vm.getRecordedLogs().length, 0);
    }

    function test_RevertWhen_ForwardOnUnknownOrOfferedLoan() public {
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.UnknownLoan.selector, 9));
        book.forward(9, address(0));
        uint256 id = offerLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.WrongStatus.selector, id, ILoanBook.LoanStatus.Offered));
        book.forward(id, address(0));
    }

    // ---------------------------------------------------------------- account, withdraw, views

    function test_RevertWhen_AnyoneButTheBookDrivesTheAccount() public {
        (, address account) = openLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        PayoutAccount acc = PayoutAccount(payable(account));
        token.mint(account, 100);
        vm.startPrank(borrower);
        vm.expectRevert(abi.encodeWithSelector(PayoutAccount.NotLoanBook.selector, borrower));
        acc.pay(address(token), borrower, 100);
        vm.expectRevert(abi.encodeWithSelector(PayoutAccount.NotLoanBook.selector, borrower));
        acc.tryPay(address(token), borrower, 100);
        vm.expectRevert(abi.encodeWithSelector(PayoutAccount.NotLoanBook.selector, borrower));
        acc.collect(address(escrow), address(token));
        vm.stopPrank();
        assertEq(token.balanceOf(account), 100);
    }

    function test_RevertWhen_WithdrawWithoutCredit() public {
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.NothingToWithdraw.selector, address(token), lender));
        vm.prank(lender);
        book.withdraw(address(token));
    }

    function test_RevertWhen_AccountOfUnknownLoan() public {
        vm.expectRevert(abi.encodeWithSelector(ILoanBook.UnknownLoan.selector, 1));
        book.accountOf(1);
    }

    // ---------------------------------------------------------------- fuzz: the split formula

    /// @dev One sweep against an independent computation of the formula, from any repaid-so-far state.
    function testFuzz_SweepSplit(uint256 payout, uint16 shareBps, uint256 repayment, uint256 paidBefore) public {
        shareBps = uint16(bound(shareBps, 1, 10_000));
        repayment = bound(repayment, 1, 1e30);
        paidBefore = bound(paidBefore, 0, repayment - 1);
        payout = bound(payout, 0, 1e36);
        (uint256 id, address account) = openLoan(address(token), 1, repayment, shareBps);
        if (paidBefore > 0) {
            token.mint(address(this), paidBefore);
            token.approve(address(book), paidBefore);
            book.repay(id, paidBefore);
        }
        token.mint(account, payout);
        (uint256 repaid, uint256 forwarded) = book.sweep(id, noSources());

        uint256 owed = repayment - paidBefore;
        uint256 share = payout * shareBps / 10_000; // payout ≤ 1e36: plain arithmetic cannot overflow here
        uint256 expectRepaid = share < owed ? share : owed;
        assertEq(repaid, expectRepaid, "repaid = min(floor(b * share), outstanding)");
        assertEq(forwarded, payout - expectRepaid);
        assertEq(token.balanceOf(lender), paidBefore + expectRepaid);
        assertEq(token.balanceOf(borrower), 1 + payout - expectRepaid);
        assertLe(book.loanOf(id).repaid, repayment);
        bool done = expectRepaid == owed;
        assertEq(uint8(book.loanOf(id).status), uint8(done ? ILoanBook.LoanStatus.Repaid : ILoanBook.LoanStatus.Active));
    }

    /// @dev A hostile token may report a balance near 2^256: the split must not overflow.
    function testFuzz_SweepSplitDoesNotOverflow(uint256 payout, uint16 shareBps) public {
        shareBps = uint16(bound(shareBps, 1, 10_000));
        payout = bound(payout, 1, type(uint256).max - PRINCIPAL);
        (uint256 id, address account) = openLoan(address(token), PRINCIPAL, type(uint256).max, shareBps);
        token.mint(account, payout);
        (uint256 repaid,) = book.sweep(id, noSources());
        assertEq(repaid, Math.mulDiv(payout, shareBps, 10_000));
    }

    /// @dev Many payouts: the lender never receives more than the debt, everything that arrived is delivered.
    function testFuzz_SuccessiveSweepsNeverOverpay(uint256[6] memory payouts, uint16 shareBps, uint256 repayment)
        public
    {
        shareBps = uint16(bound(shareBps, 1, 10_000));
        repayment = bound(repayment, 1, 1e24);
        (uint256 id, address account) = openLoan(address(token), 1, repayment, shareBps);
        uint256 arrived = 0;
        for (uint256 i = 0; i < payouts.length; ++i) {
            uint256 p = bound(payouts[i], 0, 1e24);
            token.mint(account, p);
            arrived += p;
            book.sweep(id, noSources());
            assertEq(token.balanceOf(account), 0);
            assertLe(book.loanOf(id).repaid, repayment, "repaid <= debt");
        }
        assertEq(token.balanceOf(lender), book.loanOf(id).repaid, "lender got exactly what was recorded");
        assertEq(token.balanceOf(lender) + token.balanceOf(borrower) - 1, arrived, "all that arrived was delivered");
    }

    // ---------------------------------------------------------------- gas

    function test_Gas_SweepFigures() public {
        uint256 id2 = offerLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        vm.prank(borrower);
        uint256 g = gasleft();
        book.accept(id2);
        emit log_named_uint("accept (deploys the payout account)", g - gasleft());

        (uint256 id, address account) = openLoan(address(token), PRINCIPAL, REPAYMENT, SHARE);
        token.mint(account, 10e18);
        g = gasleft();
        book.sweep(id, noSources());
        emit log_named_uint("sweep, 0 sources (direct transfer), split lender/borrower", g - gasleft());

        _gasSweepFrom(id, account, 1);
        _gasSweepFrom(id, account, 10);
        _gasSweepFrom(id, account, 32);
    }

    /// @dev `n` distinct escrow contracts each credit the account once, then one sweep pulls from all of them.
    function _gasSweepFrom(uint256 id, address account, uint256 n) internal {
        address[] memory sources = new address[](n);
        for (uint256 i = 0; i < n; ++i) {
            DeliveryEscrow e = new DeliveryEscrow(registry);
            escrow = e; // releaseEscrowTo uses the fixture's escrow
            releaseEscrowTo(trackerKey, account, address(token), 1e18);
            sources[i] = address(e);
        }
        uint256 g = gasleft();
        book.sweep(id, sources);
        uint256 used = g - gasleft();
        emit log_named_uint(string.concat("sweep, paying sources: ", vm.toString(n)), used);
        emit log_named_uint("  per source", used / n);
        assertEq(token.balanceOf(account), 0);
    }
}
