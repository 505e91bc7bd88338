// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title A contract that holds credited balances its payees pull.
/// @notice DeliveryEscrow, CropInsurance (failed payout pushes) and LoanBook (failed sweep pushes) all have this
/// shape, so a loan's PayoutAccount can collect from any of them.
interface IPullPayments {
    /// @notice Send msg.sender its whole credited balance of `token`.
    /// @return amount what was sent.
    function withdraw(address token) external returns (uint256 amount);
}
