// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

import {IPullPayments} from "../interfaces/IPullPayments.sol";
import {Funds} from "./Funds.sol";

/// @title PullPayments: the one credit ledger of every iotsettle contract.
/// @notice A payee is paid with {_pay}: a bounded push ({Funds.tryPush}) that becomes a credit when it fails, so no
/// payee can stop another payee's payment or make a batch run out of gas. Credits are pulled with {withdraw}.
/// `credited(token)` is the total owed as credits, an obligation the products add to their own when they check
/// that their balance covers what they owe.
abstract contract PullPayments is IPullPayments, ReentrancyGuard {
    mapping(address token => mapping(address account => uint256)) private _credits;
    mapping(address token => uint256) private _creditTotal;

    /// @inheritdoc IPullPayments
    function withdraw(address token) external nonReentrant returns (uint256 amount) {
        amount = _credits[token][msg.sender];
        if (amount == 0) revert NothingToWithdraw(token, msg.sender);
        _credits[token][msg.sender] = 0;
        // Each credit was added to the total, so the total holds at least this one.
        unchecked {
            _creditTotal[token] -= amount;
        }
        emit Withdrawn(token, msg.sender, amount);
        Funds.push(token, msg.sender, amount);
    }

    /// @inheritdoc IPullPayments
    function withdrawable(address token, address account) external view returns (uint256) {
        return _credits[token][account];
    }

    /// @inheritdoc IPullPayments
    function credited(address token) public view returns (uint256) {
        return _creditTotal[token];
    }

    /// @dev Make `amount` of `token` withdrawable by `account`. Emits a {Credited} event.
    function _credit(address token, address account, uint256 amount) internal {
        _credits[token][account] += amount;
        _creditTotal[token] += amount;
        emit Credited(token, account, amount);
    }

    /// @dev Pay `amount` of `token` to `to` now if a bounded push succeeds, else credit it. Call it last, after every
    /// effect and event of the act (checks-effects-interactions); returns whether the push went through.
    function _pay(address token, address to, uint256 amount) internal returns (bool pushed) {
        if (amount == 0) return true;
        pushed = Funds.tryPush(token, to, amount);
        if (!pushed) _credit(token, to, amount);
    }
}
