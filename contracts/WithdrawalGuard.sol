// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";

import {IDeviceRegistry} from "./interfaces/IDeviceRegistry.sol";
import {IWithdrawalGuard} from "./interfaces/IWithdrawalGuard.sol";

/// @title WithdrawalGuard: an account's own device as the second factor of its withdrawals.
/// @notice One guard serves every ledger ({PullPayments}) an account points at it. The device is whichever device
/// the account owns in {REGISTRY}, read at the moment of use: a rotated key or a revoked device stops approving in
/// the same block. Approvals are bound to the account, token, amount, the account's nonce, a deadline, the chain and
/// the ledger paying (its EIP-712 domain), so none can be replayed or used for anything else.
contract WithdrawalGuard is IWithdrawalGuard, EIP712, Nonces {
    bytes32 public constant WITHDRAWAL_APPROVAL_TYPEHASH = keccak256(
        "WithdrawalApproval(address account,address token,uint256 amount,uint256 nonce,uint64 deadline,bytes32 location)"
    );
    bytes32 public constant GUARD_UPDATE_TYPEHASH = keccak256(
        "GuardUpdate(address account,address token,bool enabled,uint256 threshold,bytes32[] cells,uint256 nonce,uint64 deadline)"
    );
    /// @dev The ledgers' domain ("iotsettle", "1", chain, ledger), as OpenZeppelin's EIP712 builds it for them.
    bytes32 private constant _DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant _NAME_HASH = keccak256("iotsettle");
    bytes32 private constant _VERSION_HASH = keccak256("1");

    /// @notice How long the account key alone waits to clear a guard (device lost): time for the owner to see the
    /// {GuardRecoveryStarted} event and cancel it with the device if the key was stolen.
    uint64 public constant RECOVERY_DELAY = 7 days;
    /// @notice At most this many allowed cells per guard (bounds the loop of every approval).
    uint256 public constant MAX_CELLS = 8;

    /// @notice The registry whose devices approve.
    IDeviceRegistry public immutable REGISTRY;

    mapping(address account => mapping(address token => Guard)) private _guards;
    mapping(address ledger => mapping(address account => mapping(address token => uint256))) private _spent;
    mapping(address ledger => mapping(address account => mapping(address token => Approval))) private _approvals;

    /// @dev An approval recorded for the next withdrawal at a ledger, and the device key that signed it (checked
    /// again when it is used, so revoking or rotating the device voids a recorded approval too).
    struct Approval {
        uint192 amount;
        uint64 deadline;
        address key;
    }

    constructor(IDeviceRegistry registry_) EIP712("iotsettle", "1") {
        if (address(registry_) == address(0)) revert ZeroAddress();
        REGISTRY = registry_;
    }

    /// @inheritdoc IWithdrawalGuard
    function setGuard(address token, uint256 threshold, bytes32[] calldata cells, uint64 deadline, bytes calldata signature)
        external
    {
        uint256 n = cells.length;
        if (n > MAX_CELLS) revert BadCells(n);
        for (uint256 i = 0; i < n; ++i) {
            if (cells[i] == 0) revert BadCells(n);
        }
        _checkDeadline(deadline);
        bytes32 digest = hashGuardUpdate(msg.sender, token, true, threshold, cells, _useNonce(msg.sender), deadline);
        (address device,) = _deviceOf(msg.sender, digest, signature);

        Guard storage g = _guards[msg.sender][token];
        g.enabled = true;
        g.threshold = threshold;
        g.cells = cells;
        _cancelRecovery(g, msg.sender, token);
        emit GuardSet(msg.sender, token, device, threshold, cells);
    }

    /// @inheritdoc IWithdrawalGuard
    function clearGuard(address token, uint64 deadline, bytes calldata signature) external {
        _checkDeadline(deadline);
        bytes32 digest =
            hashGuardUpdate(msg.sender, token, false, 0, new bytes32[](0), _useNonce(msg.sender), deadline);
        // slither-disable-next-line unused-return (only the check matters here, not which device)
        _deviceOf(msg.sender, digest, signature);
        delete _guards[msg.sender][token];
        emit GuardCleared(msg.sender, token);
    }

    /// @inheritdoc IWithdrawalGuard
    function startRecovery(address token) external {
        Guard storage g = _guards[msg.sender][token];
        if (!g.enabled) revert NotGuarded(msg.sender, token);
        uint64 readyAt = uint64(block.timestamp) + RECOVERY_DELAY;
        g.recoveryReadyAt = readyAt;
        emit GuardRecoveryStarted(msg.sender, token, readyAt);
    }

    /// @inheritdoc IWithdrawalGuard
    function finishRecovery(address token) external {
        uint64 readyAt = _guards[msg.sender][token].recoveryReadyAt;
        // 0 is "no recovery pending", a state, not a time compared for equality.
        // slither-disable-next-line incorrect-equality
        if (readyAt == 0 || block.timestamp < readyAt) {
            revert RecoveryNotReady(msg.sender, token, readyAt, block.timestamp);
        }
        delete _guards[msg.sender][token];
        emit GuardCleared(msg.sender, token);
    }

    /// @inheritdoc IWithdrawalGuard
    function approveWithdrawal(
        address ledger,
        address token,
        uint256 amount,
        uint64 deadline,
        bytes32 location,
        bytes calldata signature
    ) external {
        Guard storage g = _guards[msg.sender][token];
        if (!g.enabled) revert NotGuarded(msg.sender, token);
        if (amount == 0) revert ZeroAmount();
        if (amount > type(uint192).max) revert BalanceOverflow(amount);
        _checkDeadline(deadline);
        uint256 nonce = _useNonce(msg.sender);
        bytes32 digest = hashWithdrawalApproval(ledger, msg.sender, token, amount, nonce, deadline, location);
        (address device, address key) = _deviceOf(msg.sender, digest, signature);
        if (!_inCells(g.cells, location)) revert OutsideAllowedCells(msg.sender, location);
        _approvals[ledger][msg.sender][token] = Approval({amount: uint192(amount), deadline: deadline, key: key});
        _spent[ledger][msg.sender][token] = 0;
        _cancelRecovery(g, msg.sender, token);
        emit WithdrawalApproved(ledger, msg.sender, token, device, amount, nonce);
    }

    /// @inheritdoc IWithdrawalGuard
    function checkWithdrawal(address account, address token, uint256 amount) external {
        Guard storage g = _guards[account][token];
        if (!g.enabled) return;
        // Everything below is keyed by msg.sender: a contract that is not the account's ledger can only use its own
        // counters, and an approval names its ledger in its signed domain.
        Approval memory a = _approvals[msg.sender][account][token];
        if (a.amount != 0 && amount <= a.amount && block.timestamp <= a.deadline && _isCurrent(a.key)) {
            delete _approvals[msg.sender][account][token];
            return;
        }
        uint256 spent = _spent[msg.sender][account][token];
        uint256 allowance = g.threshold > spent ? g.threshold - spent : 0;
        if (amount > allowance) revert DeviceApprovalRequired(token, account, amount, allowance);
        _spent[msg.sender][account][token] = spent + amount;
    }

    /// @inheritdoc IWithdrawalGuard
    function released(address account, address token) external view returns (bool) {
        return !_guards[account][token].enabled;
    }

    /// @inheritdoc IWithdrawalGuard
    function guardOf(address account, address token) external view returns (Guard memory) {
        return _guards[account][token];
    }

    /// @inheritdoc IWithdrawalGuard
    function spentAt(address ledger, address account, address token) external view returns (uint256) {
        return _spent[ledger][account][token];
    }

    /// @inheritdoc IWithdrawalGuard
    function approvalAt(address ledger, address account, address token)
        external
        view
        returns (uint256 amount, uint64 deadline)
    {
        Approval memory a = _approvals[ledger][account][token];
        return (a.amount, a.deadline);
    }

    /// @inheritdoc IWithdrawalGuard
    function hashWithdrawalApproval(
        address ledger,
        address account,
        address token,
        uint256 amount,
        uint256 nonce,
        uint64 deadline,
        bytes32 location
    ) public view returns (bytes32) {
        bytes32 domain = keccak256(abi.encode(_DOMAIN_TYPEHASH, _NAME_HASH, _VERSION_HASH, block.chainid, ledger));
        bytes32 structHash = keccak256(
            abi.encode(WITHDRAWAL_APPROVAL_TYPEHASH, account, token, amount, nonce, deadline, location)
        );
        return MessageHashUtils.toTypedDataHash(domain, structHash);
    }

    /// @inheritdoc IWithdrawalGuard
    function hashGuardUpdate(
        address account,
        address token,
        bool enabled,
        uint256 threshold,
        bytes32[] memory cells,
        uint256 nonce,
        uint64 deadline
    ) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    GUARD_UPDATE_TYPEHASH,
                    account,
                    token,
                    enabled,
                    threshold,
                    keccak256(abi.encodePacked(cells)),
                    nonce,
                    deadline
                )
            )
        );
    }

    /// @dev The device whose current key signed `digest`; reverts unless `account` owns it. Read now, so a rotated
    /// key or a revoked device approves nothing from the block it changed in.
    function _deviceOf(address account, bytes32 digest, bytes memory signature)
        private
        view
        returns (address device, address signer)
    {
        signer = ECDSA.recover(digest, signature);
        IDeviceRegistry.KeyStatus status;
        // The kind does not matter (any device of the account approves) and a retired key approves nothing.
        // slither-disable-next-line unused-return
        (device,, status,) = REGISTRY.keyInfo(signer);
        if (status != IDeviceRegistry.KeyStatus.Current || REGISTRY.deviceOf(device).owner != account) {
            revert NotAccountDevice(account, signer);
        }
    }

    /// @dev Whether `key` is still its device's current key (not rotated out, device not revoked).
    function _isCurrent(address key) private view returns (bool) {
        // slither-disable-next-line unused-return (the status is the whole answer)
        (,, IDeviceRegistry.KeyStatus status,) = REGISTRY.keyInfo(key);
        return status == IDeviceRegistry.KeyStatus.Current;
    }

    function _cancelRecovery(Guard storage g, address account, address token) private {
        if (g.recoveryReadyAt == 0) return;
        g.recoveryReadyAt = 0;
        emit GuardRecoveryCancelled(account, token);
    }

    function _checkDeadline(uint64 deadline) private view {
        if (deadline < block.timestamp) revert ApprovalExpired(deadline, block.timestamp);
    }

    /// @dev Whether `location` (a geohash, ASCII left-aligned) lies in one of `cells`: a cell is a prefix of every
    /// location inside it. No cells: anywhere.
    function _inCells(bytes32[] storage cells, bytes32 location) private view returns (bool) {
        uint256 n = cells.length;
        if (n == 0) return true;
        for (uint256 i = 0; i < n; ++i) {
            bytes32 cell = cells[i];
            uint256 len = 0;
            while (len < 32 && cell[len] != 0) ++len;
            // Keep the first `len` bytes of the location; len >= 1 (setGuard refuses empty cells), so the shift < 256.
            bytes32 mask = bytes32(type(uint256).max << (256 - 8 * len));
            if (location & mask == cell) return true;
        }
        return false;
    }
}
