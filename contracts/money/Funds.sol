// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Address} from "@openzeppelin/contracts/utils/Address.sol";

import {ICommonErrors} from "../interfaces/ICommonErrors.sol";

/// @title Funds: the one place where iotsettle decides between ETH and an ERC-20, and moves money.
/// @notice `token == address(0)` means ETH everywhere. Pulls take exactly the stated amount (measured, not
/// trusted); pushes are either reverting ({push}, for a payer's own money going back to the caller) or bounded
/// ({tryPush}, for payees who must not be able to stop anyone else's payment).
library Funds {
    using SafeERC20 for IERC20;

    /// @notice Gas a bounded push forwards. Enough for an ERC-20 transfer with a receive hook or an ETH receive that
    /// does bookkeeping; a payee that needs more is credited instead and pulls with its own gas.
    uint256 internal constant PUSH_GAS = 100_000;

    /// @dev Take `amount` of `token` from msg.sender into this contract, from a payable function. ETH: msg.value must
    /// equal `amount`. ERC-20: msg.value must be 0, then as {pullToken}.
    // Called from payable functions only (MeteredBilling.accept/topUp, DeliveryEscrow.createEscrow); Slither does not
    // follow reachability into internal library functions.
    // slither-disable-next-line msg-value-in-nonpayable
    function pullExact(address token, uint256 amount) internal {
        if (token == address(0)) {
            if (msg.value != amount) revert ICommonErrors.WrongValue(amount, msg.value);
            return;
        }
        if (msg.value != 0) revert ICommonErrors.WrongValue(0, msg.value);
        pullToken(token, amount);
    }

    /// @dev Take `amount` of ERC-20 `token` from msg.sender: the balance must grow by exactly `amount`. For the
    /// products that hold ERC-20 only (their functions are not payable, so no ETH can come with the call).
    function pullToken(address token, uint256 amount) internal {
        uint256 before = IERC20(token).balanceOf(address(this));
        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = IERC20(token).balanceOf(address(this)) - before;
        if (received != amount) revert ICommonErrors.WrongValue(amount, received);
    }

    /// @dev Send `amount` of `token` to `to` with all remaining gas; reverts when it cannot.
    function push(address token, address to, uint256 amount) internal {
        if (token == address(0)) {
            Address.sendValue(payable(to), amount);
        } else {
            IERC20(token).safeTransfer(to, amount);
        }
    }

    /// @dev Send `amount` of `token` to `to` forwarding at most {PUSH_GAS} and copying at most one word of return
    /// data; false instead of reverting when the payee or the token refuses, runs out of gas or answers anything
    /// but nothing-or-true. The caller turns a false into a credit.
    function tryPush(address token, address to, uint256 amount) internal returns (bool ok) {
        if (token == address(0)) {
            assembly ("memory-safe") {
                ok := call(PUSH_GAS, to, amount, 0, 0, 0, 0)
            }
            return ok;
        }
        bytes4 selector = IERC20.transfer.selector;
        assembly ("memory-safe") {
            let fmp := mload(0x40)
            mstore(0x00, selector)
            mstore(0x04, to)
            mstore(0x24, amount)
            ok := call(PUSH_GAS, token, 0, 0x00, 0x44, 0x00, 0x20)
            // Success: the call succeeded and returned either nothing (from a contract) or a word equal to 1.
            switch returndatasize()
            case 0 { ok := and(ok, gt(extcodesize(token), 0)) }
            default { ok := and(ok, and(gt(returndatasize(), 31), eq(mload(0x00), 1))) }
            mstore(0x40, fmp)
        }
    }

    /// @dev This contract's balance of `token`.
    function balanceOfSelf(address token) internal view returns (uint256) {
        return token == address(0) ? address(this).balance : IERC20(token).balanceOf(address(this));
    }
}
