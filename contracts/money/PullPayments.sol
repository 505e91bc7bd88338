// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

import {IPullPayments} from "../interfaces/IPullPayments.sol";
import {IWithdrawalGuard} from "../interfaces/IWithdrawalGuard.sol";
import {Funds} from "./Funds.sol";

/// @title PullPayments: the one credit ledger of every iotsettle contract.
/// @notice A payee is paid with {_pay}: a bounded push ({Funds.tryPush}) that becomes a credit when it fails, so no
/// payee can stop another payee's payment or make a batch run out of gas. Credits are pulled with {withdraw}.
/// `credited(token)` is the total owed as credits, an obligation the products add to their own when they check
/// that their balance covers what they owe.
/// An account may point its withdrawals of a token at an {IWithdrawalGuard} (its device as a second factor): the
/// guard then checks every withdrawal before the money leaves. Whether an account is guarded is the top bit of its
/// credit word, so a withdrawal by an account that did not opt in reads no more storage than before.
abstract contract PullPayments is IPullPayments, ReentrancyGuard {
    /// @dev Top bit of a credit word: the account's withdrawals of this token go through its guard. Credits stay
    /// below it because the total of a token's credits does ({_credit}).
    uint256 private constant _GUARDED = 1 << 255;

    mapping(address token => mapping(address account => uint256)) private _credits;
    mapping(address token => uint256) private _creditTotal;
    mapping(address token => mapping(address account => IWithdrawalGuard)) private _guards;

    /// @inheritdoc IPullPayments
    function withdraw(address token) external nonReentrant returns (uint256 amount) {
        uint256 word = _credits[token][msg.sender];
        amount = word & ~_GUARDED;
        if (amount == 0) revert NothingToWithdraw(token, msg.sender);
        _credits[token][msg.sender] = word & _GUARDED;
        // Each credit was added to the total, so the total holds at least this one.
        unchecked {
            _creditTotal[token] -= amount;
        }
        emit Withdrawn(token, msg.sender, amount);
        // The guard reverts what the account may not take without its device; the account chose it, and this
        // function is nonReentrant with its effects already written.
        if (word & _GUARDED != 0) _checkGuard(_guards[token][msg.sender], token, amount);
        Funds.push(token, msg.sender, amount);
    }

    /// @inheritdoc IPullPayments
    function setWithdrawalGuard(address token, address guard) external {
        uint256 word = _credits[token][msg.sender];
        if (word & _GUARDED != 0) {
            IWithdrawalGuard current = _guards[token][msg.sender];
            if (!_guardReleases(current, token)) revert StillGuarded(token, msg.sender, address(current));
        }
        _guards[token][msg.sender] = IWithdrawalGuard(guard);
        _credits[token][msg.sender] = guard == address(0) ? word & ~_GUARDED : word | _GUARDED;
        emit WithdrawalGuardSet(token, msg.sender, guard);
    }

    /// @inheritdoc IPullPayments
    function withdrawalGuardOf(address token, address account) external view returns (address) {
        return address(_guards[token][account]);
    }

    /// @inheritdoc IPullPayments
    function withdrawable(address token, address account) external view returns (uint256) {
        return _credits[token][account] & ~_GUARDED;
    }

    /// @inheritdoc IPullPayments
    function credited(address token) public view returns (uint256) {
        return _creditTotal[token];
    }

    /// @dev Make `amount` of `token` withdrawable by `account`. Emits a {Credited} event.
    function _credit(address token, address account, uint256 amount) internal {
        uint256 total = _creditTotal[token] + amount;
        // Every credit is at most the total, so below this no credit reaches the guard bit.
        if (total >= _GUARDED) revert BalanceOverflow(total);
        _creditTotal[token] = total;
        _credits[token][account] += amount;
        emit Credited(token, account, amount);
    }

    /// @dev Pay `amount` of `token` to `to` now if a bounded push succeeds, else credit it. Call it last, after every
    /// effect and event of the act (checks-effects-interactions); returns whether the push went through.
    function _pay(address token, address to, uint256 amount) internal returns (bool pushed) {
        if (amount == 0) return true;
        pushed = Funds.tryPush(token, to, amount);
        if (!pushed) _credit(token, to, amount);
    }

    /// @dev Before a product pays `amount` of `token` to `msg.sender` outside the credit ledger (its own withdrawal of
    /// earnings or premiums): the account's withdrawal guard, if it chose one at this contract, must allow it, exactly
    /// as for {withdraw}. Call it after the withdrawal's effects are written, before the transfer.
    function _guardPayout(address token, uint256 amount) internal {
        if (_credits[token][msg.sender] & _GUARDED != 0) _checkGuard(_guards[token][msg.sender], token, amount);
    }

    // The two calls to an account's guard are written out in assembly: every product inherits this base and some sit
    // close to the contract size limit; the high-level calls cost each of them several hundred bytes.

    /// @dev `guard.checkWithdrawal(msg.sender, token, amount)`; its revert is bubbled up unchanged.
    function _checkGuard(IWithdrawalGuard guard, address token, uint256 amount) private {
        bytes4 selector = IWithdrawalGuard.checkWithdrawal.selector;
        assembly ("memory-safe") {
            let p := mload(0x40)
            mstore(p, selector)
            mstore(add(p, 0x04), caller())
            mstore(add(p, 0x24), token)
            mstore(add(p, 0x44), amount)
            if iszero(call(gas(), guard, 0, p, 0x64, 0, 0)) {
                returndatacopy(p, 0, returndatasize())
                revert(p, returndatasize())
            }
        }
    }

    /// @dev `guard.released(msg.sender, token)`; false when the call fails or answers anything but true.
    function _guardReleases(IWithdrawalGuard guard, address token) private view returns (bool ok) {
        bytes4 selector = IWithdrawalGuard.released.selector;
        assembly ("memory-safe") {
            let p := mload(0x40)
            mstore(p, selector)
            mstore(add(p, 0x04), caller())
            mstore(add(p, 0x24), token)
            ok := staticcall(gas(), guard, p, 0x44, 0x00, 0x20)
            ok := and(ok, and(gt(returndatasize(), 31), eq(mload(0x00), 1)))
        }
    }
}
