// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {DeviceEventVerifier} from "./DeviceEventVerifier.sol";
import {IDeliveryEscrow} from "./interfaces/IDeliveryEscrow.sol";
import {IDeviceRegistry} from "./interfaces/IDeviceRegistry.sol";
import {Funds} from "./money/Funds.sol";
import {PullPayments} from "./money/PullPayments.sol";

/// @title DeliveryEscrow: pay the seller when the buyer's chosen tracker signs arrival at the destination.
/// @notice State machine (forward-only): Funded → Released (device-signed Delivery, timestamp ≤ deadline) |
/// Refunded (buyer, after deadline + SETTLEMENT_GRACE) | Cancelled (seller). A delivery signed by the deadline
/// confirms however late it is relayed, until a refund; the refund waits out the grace so a relayer's delay or a
/// buyer's race cannot turn a delivery into a refund. The first valid delivery relayed releases the escrow and any
/// other is Replayed (the device SDK signs one delivery per escrow). Money is never pushed: every outcome credits
/// the {PullPayments} ledger, paid out by {withdraw}, so one hostile payee cannot block other escrows or a batch.
contract DeliveryEscrow is IDeliveryEscrow, DeviceEventVerifier, PullPayments {
    bytes32 public constant DELIVERY_TYPEHASH =
        keccak256("Delivery(uint256 escrowId,uint64 seq,uint64 timestamp,bytes32 location,int32 maxTemperature)");

    /// @notice The cold-chain refund share is expressed in basis points of the amount.
    uint16 public constant MAX_BPS = 10_000;

    uint256 private constant _TRACKER_KIND = 1 << uint8(IDeviceRegistry.DeviceKind.Tracker);

    mapping(uint256 escrowId => Escrow) private _escrows;
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
        Funds.pullExact(token, amount);
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
            _TRACKER_KIND,
            dl.timestamp
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
        emit DeliveryConfirmed(dl.escrowId, dl.seq, toSeller, toBuyer);
        _credit(token, e.seller, toSeller);
        if (toBuyer != 0) _credit(token, e.buyer, toBuyer);
        return RejectReason.None;
    }

    /// @inheritdoc IDeliveryEscrow
    function refund(uint256 escrowId) external {
        Escrow storage e = _funded(escrowId);
        if (msg.sender != e.buyer) revert NotBuyer(escrowId, msg.sender);
        // Strictly after deadline + grace: a delivery signed at the deadline has the whole grace to arrive.
        uint256 notBefore = uint256(e.deadline) + SETTLEMENT_GRACE + 1;
        if (block.timestamp < notBefore) revert TooEarly(escrowId, notBefore, block.timestamp);
        e.state = EscrowState.Refunded;
        emit EscrowRefunded(escrowId, e.amount);
        _credit(e.token, e.buyer, e.amount);
    }

    /// @inheritdoc IDeliveryEscrow
    function cancel(uint256 escrowId) external {
        Escrow storage e = _funded(escrowId);
        if (msg.sender != e.seller) revert NotSeller(escrowId, msg.sender);
        e.state = EscrowState.Cancelled;
        emit EscrowCancelled(escrowId, e.amount);
        _credit(e.token, e.buyer, e.amount);
    }

    /// @inheritdoc IDeliveryEscrow
    function escrowOf(uint256 escrowId) external view returns (Escrow memory) {
        return _escrows[escrowId];
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
}
