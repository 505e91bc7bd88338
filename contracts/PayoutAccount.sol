// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IPullPayments} from "./interfaces/IPullPayments.sol";
import {Funds} from "./money/Funds.sol";

/// @title PayoutAccount: the collection account of one loan.
/// @notice One implementation is deployed by the {LoanBook} (so LOAN_BOOK, an immutable in the code, is that book);
/// each loan's account is an EIP-1167 minimal proxy of it created with CREATE2 (salt = loanId) and obeying only the
/// book: the borrower's payouts arrive there and leave only as the book's rules say. No storage, no initializer. It holds no approvals and calls no one but the book's chosen
/// sources (`withdraw(token)` only) and the tokens it pays out.
contract PayoutAccount {
    /// @notice The LoanBook that deployed the implementation and alone may move an account's funds.
    address public immutable LOAN_BOOK;

    error NotLoanBook(address caller);

    constructor() {
        LOAN_BOOK = msg.sender;
    }

    modifier onlyLoanBook() {
        if (msg.sender != LOAN_BOOK) revert NotLoanBook(msg.sender);
        _;
    }

    /// @notice ETH payouts (e.g. an ETH escrow's withdraw) are accepted and forwarded later by the book.
    receive() external payable {}

    /// @notice Ask `source` for this account's `token` credits (`IPullPayments.withdraw(token)`).
    /// @return ok whether the call succeeded; `received` = how much this account's balance grew (measured, the
    /// source's return value is not trusted).
    function collect(address source, address token) external onlyLoanBook returns (bool ok, uint256 received) {
        uint256 before = balanceOf(token);
        bytes memory data = abi.encodeCall(IPullPayments.withdraw, (token));
        // A low-level call that copies no return data: a hostile source can neither revert the sweep with
        // malformed return data nor make it pay for a huge return buffer.
        assembly ("memory-safe") {
            ok := call(gas(), source, 0, add(data, 0x20), mload(data), 0, 0)
        }
        uint256 afterwards = balanceOf(token);
        // A hostile token's balance may shrink during the call; report growth only.
        received = afterwards > before ? afterwards - before : 0;
    }

    /// @notice Pay `amount` of `token` to `to` with bounded gas ({Funds.tryPush}); returns false instead of
    /// reverting when the payee or the token refuses or burns the gas.
    function tryPay(address token, address to, uint256 amount) external onlyLoanBook returns (bool) {
        return Funds.tryPush(token, to, amount);
    }

    /// @notice Pay `amount` of `token` (address(0) = ETH) to `to`; reverts when it cannot.
    function pay(address token, address to, uint256 amount) external onlyLoanBook {
        Funds.push(token, to, amount);
    }

    /// @notice This account's balance of `token` (address(0) = ETH).
    function balanceOf(address token) public view returns (uint256) {
        return Funds.balanceOfSelf(token);
    }
}
