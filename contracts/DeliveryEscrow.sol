// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Address} from "@openzeppelin/contracts/utils/Address.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

import {DeviceEventVerifier} from "./DeviceEventVerifier.sol";
import {IDeliveryEscrow} from "./interfaces/IDeliveryEscrow.sol";
import {IDeviceRegistry} from "./interfaces/IDeviceRegistry.sol";

/// @title DeliveryEscrow: pay the seller when the buyer's chosen tracker signs arrival at the destination.
/// @notice State machine (forward-only): Funded → Released (device-signed Delivery, timestamp ≤ deadline) |
/// Refunded (buyer, after the deadline) | Cancelled (seller). Money is never pushed: every outcome credits
/// withdrawable balances per token, paid out by {withdraw}, so one hostile payee cannot block other escrows.
contract DeliveryEscrow is IDeliveryEscrow, DeviceEventVerifier, ReentrancyGuard {
    using SafeERC20 for IERC20;

    bytes32 public constant DELIVERY_TYPEHASH =
        keccak256("Delivery(uint256 escrowId,uint64 seq,uint64 timestamp,bytes32 location,int32 maxTemperature)");

    /// @notice The cold-chain refund share is expressed in basis points of the amount.
    uint16 public constant MAX_BPS = 10_000;

    uint256 private constant _TRACKER_KIND = 1 << uint8(IDeviceRegistry.DeviceKind.Tracker);

    mapping(uint256 escrowId => Escrow) private _escrows;
    mapping(address token => mapping(address account => uint256)) private _credits;
    uint256 private _escrowCount;

    constructor(IDeviceRegistry registry_) DeviceEventVerifier(registry_) {}

    /// @inheritdoc IDeliveryEscrow
    function createEscrow(
        address seller,
        address device,
        address token,
        uint256 amount,
        bytes32 destination,
        uint64 deadline,
        int32 temperatureLimit,
        uint16 penaltyBps
    ) external payable nonReentrant returns (uint256 escrowId) {
        if (seller == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        if (amount > type(uint128).max) revert AmountTooLarge(amount);
        if (deadline <= block.timestamp) revert DeadlineNotInFuture(deadline, block.timestamp);
        if (penaltyBps > MAX_BPS) revert PenaltyTooHigh(penaltyBps);
        IDeviceRegistry.Device memory d = _REGISTRY.deviceOf(device);
        if (d.status != IDeviceRegistry.DeviceStatus.Active) revert UnknownDevice(device);
        if (d.kind != IDeviceRegistry.DeviceKind.Tracker) revert WrongDeviceKind(device);

        escrowId = ++_escrowCount;
        _escrows[escrowId] = Escrow({
            buyer: msg.sender,
            seller: seller,
            device: device,
            token: token,
            amount: amount,
            destination: destination,
            createdAt: uint64(block.timestamp),
            deadline: deadline,
            temperatureLimit: temperatureLimit,
            penaltyBps: penaltyBps,
            state: EscrowState.Funded,
            deliverySeq: 0
        });
        emit EscrowCreated(
            escrowId, msg.sender, seller, device, token, amount, destination, deadline, temperatureLimit, penaltyBps
        );
        _pullFunds(token, amount);
    }

    /// @inheritdoc IDeliveryEscrow
    function confirmDelivery(SignedDelivery calldata delivery) external {
        RejectReason reason = _confirm(delivery);
        if (reason != RejectReason.None) revert EventRejected(delivery.escrowId, delivery.seq, reason);
    }

    /// @inheritdoc IDeliveryEscrow
    function confirmDeliveries(SignedDelivery[] calldata deliveries) external returns (uint256 confirmed) {
        uint256 n = deliveries.length;
        for (uint256 i = 0; i < n; ++i) {
            SignedDelivery calldata d = deliveries[i];
            RejectReason reason = _confirm(d);
            if (reason == RejectReason.None) {
                // Bounded by the array length.
                unchecked {
                    ++confirmed;
                }
            } else {
                emit DeliveryRejected(d.escrowId, d.seq, reason);
            }
        }
    }

    /// @dev Returns None after releasing the escrow, or the reason nothing changed. An escrow already released
    /// reports Replayed so racing relayers can treat it as done.
    function _confirm(SignedDelivery calldata dl) private returns (RejectReason) {
        Escrow storage e = _escrows[dl.escrowId];
        EscrowState state = e.state;
        if (state == EscrowState.None) return RejectReason.UnknownTarget;
        if (state == EscrowState.Released) return RejectReason.Replayed;
        if (state != EscrowState.Funded) return RejectReason.NotActive;
        if (dl.location != e.destination) return RejectReason.WrongLocation;
        if (dl.timestamp > e.deadline) return RejectReason.DeadlinePassed;
        RejectReason reason = _checkTimestamp(dl.timestamp, e.createdAt);
        if (reason != RejectReason.None) return reason;
        reason = _checkSigner(
            keccak256(abi.encode(DELIVERY_TYPEHASH, dl.escrowId, dl.seq, dl.timestamp, dl.location, dl.maxTemperature)),
            dl.r,
            dl.vs,
            e.device,
            _TRACKER_KIND
        );
        if (reason != RejectReason.None) return reason;

        uint256 amount = e.amount;
        uint256 toBuyer = 0;
        if (e.penaltyBps != 0 && dl.maxTemperature > e.temperatureLimit) {
            // amount < 2^128 (createEscrow) so the product cannot overflow and revert a batch.
            toBuyer = amount * e.penaltyBps / MAX_BPS;
        }
        uint256 toSeller = amount - toBuyer;
        e.state = EscrowState.Released;
        e.deliverySeq = dl.seq;
        address token = e.token;
        _credits[token][e.seller] += toSeller;
        if (toBuyer != 0) _credits[token][e.buyer] += toBuyer;
        emit DeliveryConfirmed(dl.escrowId, dl.seq, toSeller, toBuyer);
        return RejectReason.None;
    }

    /// @inheritdoc IDeliveryEscrow
    function refund(uint256 escrowId) external {
        Escrow storage e = _funded(escrowId);
        if (msg.sender != e.buyer) revert NotBuyer(escrowId, msg.sender);
        if (block.timestamp <= e.deadline) revert DeadlineNotPassed(escrowId, e.deadline, block.timestamp);
        e.state = EscrowState.Refunded;
        _credits[e.token][e.buyer] += e.amount;
        emit EscrowRefunded(escrowId, e.amount);
    }

    /// @inheritdoc IDeliveryEscrow
    function cancel(uint256 escrowId) external {
        Escrow storage e = _funded(escrowId);
        if (msg.sender != e.seller) revert NotSeller(escrowId, msg.sender);
        e.state = EscrowState.Cancelled;
        _credits[e.token][e.buyer] += e.amount;
        emit EscrowCancelled(escrowId, e.amount);
    }

    /// @inheritdoc IDeliveryEscrow
    function withdraw(address token) external nonReentrant returns (uint256 amount) {
        amount = _credits[token][msg.sender];
        if (amount == 0) revert NothingToWithdraw(token, msg.sender);
        _credits[token][msg.sender] = 0;
        emit Withdrawn(token, msg.sender, amount);
        if (token == address(0)) {
            Address.sendValue(payable(msg.sender), amount);
        } else {
            IERC20(token).safeTransfer(msg.sender, amount);
        }
    }

    /// @inheritdoc IDeliveryEscrow
    function escrowOf(uint256 escrowId) external view returns (Escrow memory) {
        return _escrows[escrowId];
    }

    /// @inheritdoc IDeliveryEscrow
    function withdrawable(address token, address account) external view returns (uint256) {
        return _credits[token][account];
    }

    /// @inheritdoc IDeliveryEscrow
    function hashDelivery(uint256 escrowId, uint64 seq, uint64 timestamp, bytes32 location, int32 maxTemperature)
        external
        view
        returns (bytes32)
    {
        return
            _hashTypedDataV4(
                keccak256(abi.encode(DELIVERY_TYPEHASH, escrowId, seq, timestamp, location, maxTemperature))
            );
    }

    function _funded(uint256 escrowId) private view returns (Escrow storage e) {
        e = _escrows[escrowId];
        if (e.state == EscrowState.None) revert UnknownEscrow(escrowId);
        if (e.state != EscrowState.Funded) revert NotFunded(escrowId, e.state);
    }

    /// @dev Take `amount` from msg.sender; for ERC-20 the balance must grow by exactly `amount` (fee-on-transfer
    /// and lying tokens are refused rather than leaving the books short).
    function _pullFunds(address token, uint256 amount) private {
        if (token == address(0)) {
            if (msg.value != amount) revert WrongValue(amount, msg.value);
            return;
        }
        if (msg.value != 0) revert WrongValue(0, msg.value);
        uint256 before = IERC20(token).balanceOf(address(this));
        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = IERC20(token).balanceOf(address(this)) - before;
        if (received != amount) revert WrongValue(amount, received);
    }
}
