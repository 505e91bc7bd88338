// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ICommonErrors} from "./ICommonErrors.sol";

/// @title A device as a second factor for money leaving the pull-payment ledgers.
/// @notice An account opts in per token, here and at each ledger ({IPullPayments.setWithdrawalGuard}): withdrawals of
/// more than `threshold` (counted since the device last approved, per ledger) then need a fresh EIP-712
/// `WithdrawalApproval` signed by the current key of one of the
/// account's own devices in the {DeviceRegistry}, reporting a location inside one of the allowed geohash cells if
/// any are set. Changing or clearing the guard needs the device too; a lost device is replaced through a time-locked
/// recovery that any device-signed act cancels (docs/products/device-guard.md).
interface IWithdrawalGuard is ICommonErrors {
    /// @notice What an account's guard of one token is.
    struct Guard {
        bool enabled;
        uint64 recoveryReadyAt;
        uint256 threshold;
        bytes32[] cells;
    }

    /// @notice `account` guards its `token` withdrawals, approved by `device`'s signature.
    event GuardSet(
        address indexed account, address indexed token, address indexed device, uint256 threshold, bytes32[] cells
    );
    /// @notice `account` no longer guards `token` (by its device, or at the end of a recovery).
    event GuardCleared(address indexed account, address indexed token);
    /// @notice The account key asked to clear the guard without a device; it clears at `readyAt`.
    event GuardRecoveryStarted(address indexed account, address indexed token, uint64 readyAt);
    /// @notice A device-signed act stopped a pending recovery.
    event GuardRecoveryCancelled(address indexed account, address indexed token);
    /// @notice `device` approved `account`'s withdrawal of `amount` `token` from `ledger` (its approval `nonce`).
    event WithdrawalApproved(
        address indexed ledger,
        address indexed account,
        address indexed token,
        address device,
        uint256 amount,
        uint256 nonce
    );

    /// @notice Withdrawing `amount` more than the `allowance` left needs the account's device approval.
    error DeviceApprovalRequired(address token, address account, uint256 amount, uint256 allowance);
    /// @notice A signed approval or update is past its deadline.
    error ApprovalExpired(uint64 deadline, uint256 timestamp);
    /// @notice `signer` is not the current key of an active device owned by `account`.
    error NotAccountDevice(address account, address signer);
    /// @notice The device reported `location`, outside every cell the account allows.
    error OutsideAllowedCells(address account, bytes32 location);
    /// @notice More than MAX_CELLS cells, or an empty cell (which would allow everywhere).
    error BadCells(uint256 count);
    /// @notice `account` does not guard `token`.
    error NotGuarded(address account, address token);
    /// @notice No recovery is pending, or it clears only at `readyAt`.
    error RecoveryNotReady(address account, address token, uint64 readyAt, uint256 timestamp);

    /// @notice Guard msg.sender's `token` withdrawals (or change the guard). `signature` is a device's EIP-712
    /// `GuardUpdate(msg.sender, token, true, threshold, cells, nonces(msg.sender), deadline)` in this contract's
    /// domain. Cancels a pending recovery. Emits a {GuardSet} event.
    function setGuard(address token, uint256 threshold, bytes32[] calldata cells, uint64 deadline, bytes calldata signature)
        external;

    /// @notice Stop guarding msg.sender's `token` withdrawals. `signature` is a device's EIP-712
    /// `GuardUpdate(msg.sender, token, false, 0, [], nonces(msg.sender), deadline)`. Emits a {GuardCleared} event.
    function clearGuard(address token, uint64 deadline, bytes calldata signature) external;

    /// @notice The account key alone (device lost): start the RECOVERY_DELAY after which {finishRecovery} clears the
    /// guard. Any device-signed act before then cancels it. Emits a {GuardRecoveryStarted} event.
    function startRecovery(address token) external;

    /// @notice Clear msg.sender's `token` guard once its recovery delay has passed. Emits a {GuardCleared} event.
    function finishRecovery(address token) external;

    /// @notice Record msg.sender's device approval to withdraw up to `amount` of `token` from `ledger` once, until
    /// `deadline`. `signature` is the device's EIP-712 `WithdrawalApproval(msg.sender, token, amount,
    /// nonces(msg.sender), deadline, location)` in the ledger's domain ("iotsettle", "1", chain, ledger); `location`
    /// must lie in an allowed cell. Replaces an unused approval, makes the threshold whole again at that ledger and
    /// cancels a pending recovery. Emits a {WithdrawalApproved} event.
    function approveWithdrawal(
        address ledger,
        address token,
        uint256 amount,
        uint64 deadline,
        bytes32 location,
        bytes calldata signature
    ) external;

    /// @notice Called by a ledger (msg.sender) before it pays `account` `amount` of `token`: passes when the account
    /// does not guard `token`, when an unexpired approval at this ledger covers `amount` (the approval is used up),
    /// or when `amount` fits what is left of the threshold at this ledger; reverts with {DeviceApprovalRequired}
    /// otherwise.
    function checkWithdrawal(address account, address token, uint256 amount) external;

    /// @notice Whether `account`'s `token` is free to leave this guard (not guarded).
    function released(address account, address token) external view returns (bool);

    /// @notice `account`'s guard of `token`.
    function guardOf(address account, address token) external view returns (Guard memory);

    /// @notice What `account` withdrew of `token` from `ledger` without its device since the device last approved.
    function spentAt(address ledger, address account, address token) external view returns (uint256);

    /// @notice The unused approval of `account` at `ledger` for `token`: up to `amount` until `deadline`.
    function approvalAt(address ledger, address account, address token)
        external
        view
        returns (uint256 amount, uint64 deadline);

    /// @notice The digest a device signs to approve a withdrawal from `ledger` (the ledger's EIP-712 domain).
    function hashWithdrawalApproval(
        address ledger,
        address account,
        address token,
        uint256 amount,
        uint256 nonce,
        uint64 deadline,
        bytes32 location
    ) external view returns (bytes32);

    /// @notice The digest a device signs to set (`enabled`) or clear an account's guard (this contract's domain).
    function hashGuardUpdate(
        address account,
        address token,
        bool enabled,
        uint256 threshold,
        bytes32[] memory cells,
        uint256 nonce,
        uint64 deadline
    ) external view returns (bytes32);
}
