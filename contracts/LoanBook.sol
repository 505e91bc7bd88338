// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Clones} from "@openzeppelin/contracts/proxy/Clones.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";

import {PayoutAccount} from "./PayoutAccount.sol";
import {ILoanBook} from "./interfaces/ILoanBook.sol";
import {Funds} from "./money/Funds.sol";
import {PullPayments} from "./money/PullPayments.sol";

/// @title LoanBook: micro-loans repaid from the borrower's incoming payouts through a per-loan collection account.
/// @notice Rules (docs/products/micro-loan.md):
/// - offer: lender escrows `principal`; `repayment` ≥ `principal` > 0 is the debt; 0 < `shareBps` ≤ 10_000.
/// - accept (borrower, block.timestamp ≤ acceptBy): the loan's {PayoutAccount} is deployed at
///   `accountOf(loanId)` (an EIP-1167 clone created with CREATE2, salt = loanId) and the principal goes to the
///   borrower.
/// - sweep (anyone): the account pulls its credits from the given sources, then of its loan-token balance b
///   `repay = min(⌊b × shareBps / 10_000⌋, repayment − repaid)` (0 unless Active) goes to the lender and `b − repay`
///   to the borrower; when repaid reaches repayment the loan is Repaid and every later sweep forwards everything.
/// - repay (anyone): direct payment to the lender, capped at what is outstanding.
/// - forward (anyone): other tokens and ETH in the account go to the borrower; a loan is repaid in its own token only.
/// Money is pushed with bounded gas; a failed push is credited here ({PullPayments}) and pulled with {withdraw}, so
/// a payee who cannot receive (a token that blacklists, calls back or burns gas) never blocks the other party.
/// Obligations per token: principals of offered loans ({principalHeld}) plus credits ({credited}); every credit is
/// checked to be backed by a balance that covers both.
contract LoanBook is ILoanBook, PullPayments {
    using SafeERC20 for IERC20;

    /// @notice `shareBps` is in basis points of each payout.
    uint16 public constant MAX_BPS = 10_000;

    /// @notice A sweep pulls from at most this many sources (bounds the loop a relayer pays for).
    uint256 public constant MAX_SOURCES = 32;

    /// @notice The PayoutAccount code every loan's account runs: each account is an EIP-1167 minimal proxy
    /// (CREATE2, salt = loanId) delegating to it, ~45k gas to deploy instead of ~500k. The implementation's
    /// immutable LOAN_BOOK is this book, so every account obeys this book only.
    address public immutable ACCOUNT_IMPLEMENTATION;

    mapping(uint256 loanId => Loan) private _loans;
    mapping(address token => uint256) private _principalHeld;
    uint256 private _loanCount;

    constructor() {
        ACCOUNT_IMPLEMENTATION = address(new PayoutAccount());
    }

    // ---------------------------------------------------------------- offer / cancel / accept

    /// @inheritdoc ILoanBook
    function offer(
        address borrower,
        address token,
        uint256 principal,
        uint256 repayment,
        uint16 shareBps,
        uint64 acceptBy,
        uint64 dueBy
    ) external nonReentrant returns (uint256 loanId) {
        if (borrower == address(0) || token == address(0)) revert ZeroAddress();
        if (principal == 0) revert ZeroAmount();
        if (repayment < principal) revert RepaymentBelowPrincipal(principal, repayment);
        if (shareBps == 0 || shareBps > MAX_BPS) revert InvalidShare(shareBps);
        if (acceptBy < block.timestamp || dueBy <= acceptBy) revert InvalidDates(acceptBy, dueBy, block.timestamp);

        loanId = ++_loanCount;
        Loan storage l = _loans[loanId];
        l.lender = msg.sender;
        l.borrower = borrower;
        l.token = token;
        l.principal = principal;
        l.repayment = repayment;
        l.shareBps = shareBps;
        l.acceptBy = acceptBy;
        l.dueBy = dueBy;
        l.status = LoanStatus.Offered;
        _principalHeld[token] += principal;
        emit LoanOffered(loanId, msg.sender, borrower, token, principal, repayment, shareBps, acceptBy, dueBy);

        // The book must hold exactly the principal it will pay out: fee-on-transfer and lying tokens are refused.
        Funds.pullToken(token, principal);
    }

    /// @inheritdoc ILoanBook
    function cancelOffer(uint256 loanId) external nonReentrant {
        Loan storage l = _loanIn(loanId, LoanStatus.Offered);
        address lender = l.lender;
        if (msg.sender != lender && msg.sender != l.borrower && block.timestamp <= l.acceptBy) {
            revert NotAllowedToCancel(loanId, msg.sender);
        }
        l.status = LoanStatus.Cancelled;
        _principalHeld[l.token] -= l.principal;
        emit LoanCancelled(loanId);
        IERC20(l.token).safeTransfer(lender, l.principal);
    }

    /// @inheritdoc ILoanBook
    function accept(uint256 loanId) external nonReentrant returns (address account) {
        Loan storage l = _loanIn(loanId, LoanStatus.Offered);
        address borrower = l.borrower;
        if (msg.sender != borrower) revert NotBorrower(loanId, msg.sender);
        if (block.timestamp > l.acceptBy) revert OfferExpired(loanId, l.acceptBy, block.timestamp);
        l.status = LoanStatus.Active;
        _principalHeld[l.token] -= l.principal;
        account = _deployAccount(loanId, l);
        emit LoanAccepted(loanId, account);
        IERC20(l.token).safeTransfer(borrower, l.principal);
    }

    // ---------------------------------------------------------------- repayment

    /// @inheritdoc ILoanBook
    function sweep(uint256 loanId, address[] calldata sources)
        external
        nonReentrant
        returns (uint256 repaid, uint256 forwarded)
    {
        Loan storage l = _loans[loanId];
        LoanStatus status = l.status;
        if (status == LoanStatus.None) revert UnknownLoan(loanId);
        if (status == LoanStatus.Offered) revert WrongStatus(loanId, status);
        address token = l.token;
        PayoutAccount account = _accountOrDeploy(loanId, l);
        _collect(loanId, account, token, sources);

        // Read after collecting on purpose: the split applies to everything the sources just paid in.
        uint256 balance = account.balanceOf(token);
        if (status == LoanStatus.Active) {
            uint256 owed = l.repayment - l.repaid;
            uint256 sweptBefore = l.swept;
            // Saturating: a hostile token may report any balance; the sum must not overflow and block the loan.
            uint256 sweptNow = balance > type(uint256).max - sweptBefore ? type(uint256).max : sweptBefore + balance;
            l.swept = sweptNow;
            // The share of the running total, less what earlier sweeps took: the split of the arrivals into sweeps
            // changes nothing (remainders carry). mulDiv never overflows; the difference is at most the share of
            // `balance` rounded up, which is at most `balance`.
            uint16 share = l.shareBps;
            uint256 due = Math.mulDiv(sweptNow, share, MAX_BPS) - Math.mulDiv(sweptBefore, share, MAX_BPS);
            repaid = Math.min(due, owed);
            // slither-disable-next-line reentrancy-no-eth (after collecting; every entry point is nonReentrant)
            if (repaid != 0) _recordRepayment(loanId, l, repaid, owed);
        }
        forwarded = balance - repaid;
        address borrower = l.borrower;
        if (forwarded != 0) emit Forwarded(loanId, borrower, forwarded);
        // A failed push credits the payee (PullPayments' ledger) after the collection calls; every entry point is
        // nonReentrant and the loan's books were final before the first call.
        // slither-disable-next-line reentrancy-no-eth
        if (repaid != 0) _payOut(account, token, l.lender, repaid);
        // slither-disable-next-line reentrancy-no-eth
        if (forwarded != 0) _payOut(account, token, borrower, forwarded);
    }

    /// @inheritdoc ILoanBook
    function repay(uint256 loanId, uint256 amount) external nonReentrant returns (uint256 paid) {
        Loan storage l = _loanIn(loanId, LoanStatus.Active);
        uint256 owed = l.repayment - l.repaid;
        paid = Math.min(amount, owed);
        if (paid == 0) revert ZeroAmount();
        _recordRepayment(loanId, l, paid, owed);
        IERC20(l.token).safeTransferFrom(msg.sender, l.lender, paid);
    }

    /// @dev Effects and events of `amount` (≤ owed) reaching the lender.
    function _recordRepayment(uint256 loanId, Loan storage l, uint256 amount, uint256 owed) private {
        l.repaid += amount;
        // amount ≤ owed by the callers' min(), so `>=` means "exactly paid off".
        bool paidOff = amount >= owed;
        if (paidOff) {
            l.status = LoanStatus.Repaid;
            l.repaidAt = uint64(block.timestamp);
        }
        emit Repaid(loanId, amount, owed - amount);
        if (paidOff) emit LoanRepaid(loanId);
    }

    // ---------------------------------------------------------------- other assets

    /// @inheritdoc ILoanBook
    function forward(uint256 loanId, address token) external nonReentrant returns (uint256 amount) {
        return _forward(loanId, token, new address[](0));
    }

    /// @inheritdoc ILoanBook
    function forwardFrom(uint256 loanId, address token, address[] calldata sources)
        external
        nonReentrant
        returns (uint256 amount)
    {
        return _forward(loanId, token, sources);
    }

    function _forward(uint256 loanId, address token, address[] memory sources) private returns (uint256 amount) {
        Loan storage l = _loans[loanId];
        LoanStatus status = l.status;
        if (status == LoanStatus.None) revert UnknownLoan(loanId);
        if (status == LoanStatus.Offered) revert WrongStatus(loanId, status);
        if (token == l.token) revert LoanTokenNeedsSweep(loanId, token);
        PayoutAccount account = _accountOrDeploy(loanId, l);
        _collect(loanId, account, token, sources);
        amount = account.balanceOf(token);
        if (amount != 0) {
            address borrower = l.borrower;
            emit AssetForwarded(loanId, token, borrower, amount);
            // Not the loan token: no one else's share is at stake, so a borrower who cannot receive simply retries.
            account.pay(token, borrower, amount);
        }
    }

    // ---------------------------------------------------------------- views

    /// @inheritdoc ILoanBook
    function loanOf(uint256 loanId) external view returns (Loan memory) {
        return _loans[loanId];
    }

    /// @inheritdoc ILoanBook
    function accountOf(uint256 loanId) public view returns (address) {
        if (_loans[loanId].status == LoanStatus.None) revert UnknownLoan(loanId);
        return Clones.predictDeterministicAddress(ACCOUNT_IMPLEMENTATION, bytes32(loanId));
    }

    /// @inheritdoc ILoanBook
    function outstanding(uint256 loanId) external view returns (uint256) {
        Loan storage l = _loans[loanId];
        return l.status == LoanStatus.Active ? l.repayment - l.repaid : 0;
    }

    /// @inheritdoc ILoanBook
    function principalHeld(address token) external view returns (uint256) {
        return _principalHeld[token];
    }

    // ---------------------------------------------------------------- internals

    function _loanIn(uint256 loanId, LoanStatus expected) private view returns (Loan storage l) {
        l = _loans[loanId];
        LoanStatus status = l.status;
        if (status == LoanStatus.None) revert UnknownLoan(loanId);
        if (status != expected) revert WrongStatus(loanId, status);
    }

    function _deployAccount(uint256 loanId, Loan storage l) private returns (address account) {
        account = Clones.cloneDeterministic(ACCOUNT_IMPLEMENTATION, bytes32(loanId));
        l.account = account;
    }

    /// @dev A cancelled loan's account is deployed on first use, so payouts sent to the predicted address before
    /// the cancellation still reach the borrower.
    function _accountOrDeploy(uint256 loanId, Loan storage l) private returns (PayoutAccount) {
        address account = l.account;
        if (account == address(0)) account = _deployAccount(loanId, l);
        return PayoutAccount(payable(account));
    }

    function _collect(uint256 loanId, PayoutAccount account, address token, address[] memory sources) private {
        uint256 n = sources.length;
        if (n > MAX_SOURCES) revert TooManySources(n, MAX_SOURCES);
        for (uint256 i = 0; i < n; ++i) {
            // slither-disable-next-line calls-loop (at most MAX_SOURCES; a failing source is skipped, not fatal)
            (bool ok, uint256 received) = account.collect(sources[i], token);
            if (ok) emit SourceCollected(loanId, sources[i], received);
            else emit SourceFailed(loanId, sources[i]);
        }
    }

    /// @dev Push from the account with bounded gas; if the payee or the token refuses, move the amount here as a
    /// pull credit. Every credit stays backed: after the move the book's balance must cover every obligation in the
    /// token (all credits and the principals of offered loans), so a token that lies about a transfer is refused.
    function _payOut(PayoutAccount account, address token, address to, uint256 amount) private {
        if (account.tryPay(token, to, amount)) return;
        // slither-disable-next-line reentrancy-benign,reentrancy-no-eth,reentrancy-events (only after a refused push; nonReentrant)
        _credit(token, to, amount);
        if (
            !account.tryPay(token, address(this), amount)
                || Funds.balanceOfSelf(token) < credited(token) + _principalHeld[token]
        ) {
            revert PaymentFailed(token, to, amount);
        }
    }
}
