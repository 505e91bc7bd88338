// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ICommonErrors} from "./ICommonErrors.sol";

/// @title A contract that holds credited balances its payees pull.
/// @notice Every iotsettle contract that owes money has this shape ({PullPayments}): a push that fails (a payee that
/// reverts, burns gas or is blacklisted by the token) becomes a credit here, and only that payee's own {withdraw}
/// moves it. A loan's PayoutAccount collects from any of them through {withdraw}.
interface IPullPayments is ICommonErrors {
    /// @notice `amount` of `token` (address(0) = ETH) became withdrawable by `account`.
    event Credited(address indexed token, address indexed account, uint256 amount);
    /// @notice `account` withdrew its whole credit of `token`.
    event Withdrawn(address indexed token, address indexed account, uint256 amount);
    /// @notice `account`'s withdrawals of `token` now go through `guard` (address(0): no guard).
    event WithdrawalGuardSet(address indexed token, address indexed account, address guard);

    /// @notice The account's current `guard` still guards `token`: clear it there first (with the device).
    error StillGuarded(address token, address account, address guard);

    /// @notice Send msg.sender its whole credited balance of `token` (address(0) = ETH). A guarded account's guard
    /// must allow it ({IWithdrawalGuard.checkWithdrawal}): within the threshold, or approved by the account's device.
    /// @dev Reverts with {NothingToWithdraw} when there is none. Emits a {Withdrawn} event.
    /// @return amount what was sent.
    function withdraw(address token) external returns (uint256 amount);

    /// @notice Send msg.sender's later withdrawals of `token` through `guard` (address(0): none). Refused with
    /// {StillGuarded} while the current guard still guards the account. Emits a {WithdrawalGuardSet} event.
    function setWithdrawalGuard(address token, address guard) external;

    /// @notice The guard of `account`'s `token` withdrawals (address(0): none).
    function withdrawalGuardOf(address token, address account) external view returns (address);

    /// @notice What `account` can {withdraw} of `token` now.
    function withdrawable(address token, address account) external view returns (uint256);

    /// @notice The sum of every account's credit of `token`: an obligation the contract's balance always covers.
    function credited(address token) external view returns (uint256);
}
