// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title The errors every iotsettle contract shares, declared once.
/// @notice Argument order is fixed across the family: the offending id or token first, then the account, then the
/// expected value, then the value received (as in OpenZeppelin's IERC6093). A product declares only the errors that
/// are its own; the Python operations turn each of these into one sentence (oracle/ops/sentences.py).
interface ICommonErrors {
    /// @notice An address argument that must name someone was address(0).
    error ZeroAddress();
    /// @notice An amount that must be positive was 0.
    error ZeroAmount();
    /// @notice The funds that arrived differ from what the call said: msg.value for ETH, the balance delta for an
    /// ERC-20 (fee-on-transfer and lying tokens are refused rather than leaving the books short).
    error WrongValue(uint256 expected, uint256 received);
    /// @notice A balance would no longer fit the width the contract stores it in.
    error BalanceOverflow(uint256 balance);
    /// @notice The device is not registered or not active in the registry.
    error UnknownDevice(address device);
    /// @notice The device's kind cannot be used by this product.
    error WrongDeviceKind(address device);
    /// @notice The caller has no pull credit of `token` to withdraw.
    error NothingToWithdraw(address token, address account);
    /// @notice A required push of funds failed (a reverting push where no credit fallback applies).
    error PaymentFailed(address token, address to, uint256 amount);
    /// @notice The caller is not the party this act belongs to.
    error NotParty(uint256 id, address caller);
    /// @notice Closing was not requested for `id`.
    error CloseNotRequested(uint256 id);
    /// @notice `id` can end (close, refund, finalize) only from `notBefore`; `timestamp` is the block's.
    error TooEarly(uint256 id, uint256 notBefore, uint256 timestamp);
    /// @notice The caller accepted other terms than the ones on chain (the acceptance names what it accepts).
    error TermsMismatch(uint256 id, bytes32 expected, bytes32 accepted);
}
