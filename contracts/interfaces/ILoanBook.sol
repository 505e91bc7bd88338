// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IPullPayments} from "./IPullPayments.sol";

/// @title Micro-loans repaid automatically out of the borrower's incoming payouts.
/// @notice A lender offers a loan and escrows the principal here; when the borrower accepts, the book deploys the
/// loan's own {PayoutAccount} (a collection account: a minimal proxy created with CREATE2, salt = loanId, so its
/// address is known from the offer on: {accountOf}) and sends the principal to the borrower. The borrower names that account as the payee of
/// escrows and the beneficiary of insurance cover. Anyone may {sweep} it: the account pulls its credits from the
/// named sources, then of everything it holds in the loan token, `shareBps` goes to the lender until the debt
/// (`repayment`) is paid and the rest to the borrower. Once repaid, everything goes to the borrower.
///
/// Pushes are attempted first; a push that fails (a token that blacklists or calls back the receiver) becomes a
/// credit here that the payee pulls with {withdraw}, so neither party can block the other's share.
interface ILoanBook is IPullPayments {
    /// @notice None → Offered → Active → Repaid; Offered → Cancelled.
    enum LoanStatus {
        None,
        Offered,
        Active,
        Repaid,
        Cancelled
    }

    struct Loan {
        address lender;
        address borrower;
        address token;
        uint256 principal;
        uint256 repayment;
        uint256 repaid;
        uint16 shareBps;
        uint64 acceptBy;
        uint64 dueBy;
        LoanStatus status;
        address account;
        uint64 repaidAt;
        /// Loan-token arrivals split by sweeps while the loan was Active. The share is taken of this running total
        /// (⌊swept × shareBps / 10_000⌋ minus what earlier sweeps took), so how the arrivals are cut into sweeps does
        /// not change what the lender receives: rounding remainders carry to the next sweep.
        uint256 swept;
    }

    event LoanOffered(
        uint256 indexed loanId,
        address indexed lender,
        address indexed borrower,
        address token,
        uint256 principal,
        uint256 repayment,
        uint16 shareBps,
        uint64 acceptBy,
        uint64 dueBy
    );
    /// @notice The offer was withdrawn, declined or expired; the principal went back to the lender.
    event LoanCancelled(uint256 indexed loanId);
    /// @notice The borrower accepted and received the principal; `account` is the loan's payout account.
    event LoanAccepted(uint256 indexed loanId, address account);
    /// @notice `amount` of the loan token went to the lender (from a sweep or a direct {repay});
    /// `outstanding` is what the borrower still owes after it.
    event Repaid(uint256 indexed loanId, uint256 amount, uint256 outstanding);
    /// @notice `amount` of the loan token went to the borrower (their share of a sweep).
    event Forwarded(uint256 indexed loanId, address indexed borrower, uint256 amount);
    /// @notice The debt is paid in full; later sweeps forward everything to the borrower.
    event LoanRepaid(uint256 indexed loanId);
    /// @notice A sweep pulled `amount` of the loan token from `source` into the account.
    event SourceCollected(uint256 indexed loanId, address indexed source, uint256 amount);
    /// @notice A source's `withdraw` reverted (often: nothing credited); the sweep went on without it.
    event SourceFailed(uint256 indexed loanId, address indexed source);
    /// @notice A token other than the loan token (or ETH, `token` = address(0)) went to the borrower.
    event AssetForwarded(uint256 indexed loanId, address indexed token, address indexed borrower, uint256 amount);

    error RepaymentBelowPrincipal(uint256 principal, uint256 repayment);
    error InvalidShare(uint16 shareBps);
    error InvalidDates(uint64 acceptBy, uint64 dueBy, uint256 timestamp);
    error UnknownLoan(uint256 loanId);
    error WrongStatus(uint256 loanId, LoanStatus status);
    error NotBorrower(uint256 loanId, address caller);
    error NotAllowedToCancel(uint256 loanId, address caller);
    error OfferExpired(uint256 loanId, uint64 acceptBy, uint256 timestamp);
    error TooManySources(uint256 count, uint256 max);
    error LoanTokenNeedsSweep(uint256 loanId, address token);

    /// @notice Lender (msg.sender) offers `borrower` a loan of `principal` `token` units, to be paid back as
    /// `repayment` (≥ principal; the difference is the lender's fee). The principal is pulled now and held until
    /// {accept} or {cancelOffer}; fee-on-transfer tokens are refused. `shareBps` (1..10_000) is the part of every
    /// incoming payout taken for repayment. The borrower may accept until `acceptBy`; `dueBy` is the agreed
    /// repayment date: recorded for credit history, not enforced (the loan is unsecured).
    /// Emits a {LoanOffered} event.
    function offer(
        address borrower,
        address token,
        uint256 principal,
        uint256 repayment,
        uint16 shareBps,
        uint64 acceptBy,
        uint64 dueBy
    ) external returns (uint256 loanId);

    /// @notice While Offered: the lender withdraws or the borrower declines at any time; anyone may cancel once
    /// `acceptBy` has passed. The principal goes back to the lender. Emits a {LoanCancelled} event.
    function cancelOffer(uint256 loanId) external;

    /// @notice Borrower, until `acceptBy`: deploys the loan's payout account and receives the principal.
    /// Emits a {LoanAccepted} event.
    function accept(uint256 loanId) external returns (address account);

    /// @notice Anyone: the account pulls its `loan.token` credits from each of `sources` (a failing source is
    /// skipped with {SourceFailed}), then splits its whole loan-token balance b:
    /// `repay = min(b × shareBps / 10_000 (rounded down), outstanding)` (0 unless Active) to the lender, `b − repay`
    /// to the borrower. On a cancelled loan the account is deployed if needed and everything goes to the borrower.
    /// Emits {SourceCollected}/{SourceFailed}, {Repaid}, {Forwarded} and {LoanRepaid} events.
    function sweep(uint256 loanId, address[] calldata sources) external returns (uint256 repaid, uint256 forwarded);

    /// @notice Anyone pays `amount` (capped at what is outstanding) from their own balance straight to the lender.
    /// Emits {Repaid} (and {LoanRepaid}) events.
    /// @return paid the amount taken.
    function repay(uint256 loanId, uint256 amount) external returns (uint256 paid);

    /// @notice Anyone: the account's whole balance of `token` (address(0) = ETH), which must not be the loan
    /// token, goes to the borrower: a loan is repaid in its own token only. Returns 0 (no event) when there is
    /// nothing. Emits an {AssetForwarded} event.
    function forward(uint256 loanId, address token) external returns (uint256 amount);

    /// @notice {forward} after pulling `token` credits from `sources` (e.g. ETH escrows paying the account).
    function forwardFrom(uint256 loanId, address token, address[] calldata sources) external returns (uint256 amount);

    /// @notice Every field of a loan.
    function loanOf(uint256 loanId) external view returns (Loan memory);

    /// @notice The loan's payout account: deployed on accept, predictable from the offer on.
    function accountOf(uint256 loanId) external view returns (address);

    /// @notice What the borrower still owes (0 unless Active).
    function outstanding(uint256 loanId) external view returns (uint256);

    /// @notice Principal of `token` the book holds for loans offered and not yet accepted or cancelled. With
    /// {credited} it is everything the book owes in `token`; its balance always covers both.
    function principalHeld(address token) external view returns (uint256);
}
