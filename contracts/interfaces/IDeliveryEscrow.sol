// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IDeviceEvents} from "./IDeviceEvents.sol";
import {IPullPayments} from "./IPullPayments.sol";

/// @title Escrow released by a tracker's device-signed Delivery at the destination.
/// @notice Payments are pulled: releases, refunds and cancellations credit withdrawable balances per token
/// (address(0) = native ETH) in the {IPullPayments} ledger, so a reverting or re-entering payee cannot block anyone
/// else. Ending rule: a delivery signed by the deadline confirms until the escrow is refunded, and a refund waits
/// until after `deadline + SETTLEMENT_GRACE`. The first valid delivery relayed releases the escrow; any other
/// delivery of the same escrow is then Replayed, so a tracker must sign only one delivery per escrow.
interface IDeliveryEscrow is IDeviceEvents, IPullPayments {
    /// @notice Forward-only: Funded → Released | Refunded | Cancelled.
    enum EscrowState {
        None,
        Funded,
        Released,
        Refunded,
        Cancelled
    }

    struct Escrow {
        address buyer;
        address seller;
        address device;
        address token;
        uint256 amount;
        bytes32 destination;
        uint64 createdAt;
        uint64 deadline;
        int32 temperatureLimit;
        uint16 penaltyBps;
        EscrowState state;
        uint64 deliverySeq;
    }

    /// @notice A tracker's `Delivery(escrowId, seq, timestamp, location, maxTemperature)` with its signature in
    /// the ERC-2098 compact form: `vs` = s with the top bit set when v is 28 (65-byte r‖s‖v converts losslessly).
    struct SignedDelivery {
        uint256 escrowId;
        uint64 seq;
        uint64 timestamp;
        bytes32 location;
        int32 maxTemperature;
        bytes32 r;
        bytes32 vs;
    }

    event EscrowCreated(
        uint256 indexed escrowId,
        address indexed buyer,
        address indexed seller,
        address device,
        address token,
        uint256 amount,
        bytes32 destination,
        uint64 deadline,
        int32 temperatureLimit,
        uint16 penaltyBps
    );
    /// @notice The seller was credited `toSeller`, the buyer `toBuyer` (cold-chain penalty).
    event DeliveryConfirmed(uint256 indexed escrowId, uint64 seq, uint256 toSeller, uint256 toBuyer);
    /// @notice A batch item was skipped; nothing changed for it.
    event DeliveryRejected(uint256 indexed escrowId, uint64 seq, RejectReason reason);
    event EscrowRefunded(uint256 indexed escrowId, uint256 amount);
    event EscrowCancelled(uint256 indexed escrowId, uint256 amount);

    /// @notice Escrow amounts are capped at 2^128 − 1 base units so no credit sum can overflow.
    error AmountTooLarge(uint256 amount);
    error DeadlineNotInFuture(uint64 deadline, uint256 timestamp);
    error PenaltyTooHigh(uint16 penaltyBps);
    error UnknownEscrow(uint256 escrowId);
    error NotBuyer(uint256 escrowId, address caller);
    error NotSeller(uint256 escrowId, address caller);
    error NotFunded(uint256 escrowId, EscrowState state);
    /// @notice A packed batch whose length is not a whole number of records.
    error MalformedBatch(uint256 length);

    /// @notice Buyer creates and funds an escrow. For ETH (`token` = address(0)) send `amount` as msg.value.
    /// `penaltyBps` = 0 means no cold-chain terms; otherwise if the tracker reports a maxTemperature above
    /// `temperatureLimit` (centi-°C), `penaltyBps` of the amount goes back to the buyer.
    /// Emits an {EscrowCreated} event.
    function createEscrow(
        address seller,
        address device,
        address token,
        uint256 amount,
        bytes32 destination,
        uint64 deadline,
        int32 temperatureLimit,
        uint16 penaltyBps
    ) external payable returns (uint256 escrowId);

    /// @notice Settle one delivery; reverts with {EventRejected} if it cannot. Emits a {DeliveryConfirmed} event
    /// and {Credited} events.
    function confirmDelivery(SignedDelivery calldata delivery) external;

    /// @notice Settle many deliveries; bad items are skipped with a {DeliveryRejected} event. Emits a
    /// {DeliveryConfirmed} event per release and one {Credited} event per run of releases to the same seller and
    /// token.
    /// @return confirmed how many items released their escrow.
    function confirmDeliveries(SignedDelivery[] calldata deliveries) external returns (uint256 confirmed);

    /// @notice Settle many deliveries from a packed batch: the cheap way for a relayer. Each record is, big-endian
    /// and unpadded: escrowId (uint64) ‖ seq (uint64) ‖ timestamp (uint64) ‖ location (bytes32) ‖ maxTemperature
    /// (int32, two's complement) ‖ r ‖ vs ‖ the escrow's {deliveryTerms} (98 bytes), 222 bytes in all. A record
    /// whose escrowId field has its top bit set (`SAME_PARTY()`) leaves out the first 40 bytes of terms (seller,
    /// token): they are the previous record's. Terms that do not match the escrow cost the storage reads they were
    /// meant to save, nothing else: every item has the outcome {confirmDeliveries} gives it. Bad items are skipped
    /// with a {DeliveryRejected} event; reverts with {MalformedBatch} when the last record is cut short. Emits a
    /// {DeliveryConfirmed} event per release and one {Credited} event per run of releases to the same seller and
    /// token.
    /// @return confirmed how many items released their escrow.
    function confirmDeliveriesPacked(bytes calldata batch) external returns (uint256 confirmed);

    /// @notice Buyer only, while Funded, strictly after `deadline + SETTLEMENT_GRACE` (reverts with {TooEarly}
    /// naming the first second it may). Credits the buyer. Emits {EscrowRefunded} and {Credited} events.
    function refund(uint256 escrowId) external;

    /// @notice Seller only, while Funded: give up and credit the buyer. Emits {EscrowCancelled} and {Credited}.
    function cancel(uint256 escrowId) external;

    function escrowOf(uint256 escrowId) external view returns (Escrow memory);

    /// @notice The terms a relayer sends beside each delivery of `escrowId` in {confirmDeliveriesPacked}, 98 bytes:
    /// seller ‖ token ‖ device (20 bytes each) ‖ amount (uint128) ‖ createdAt (uint64) ‖ deadline (uint64) ‖
    /// temperatureLimit (int32) ‖ penaltyBps (uint16). They never change; reverts with {UnknownEscrow}.
    function deliveryTerms(uint256 escrowId) external view returns (bytes memory);

    /// @notice The EIP-712 digest a tracker signs for a Delivery.
    function hashDelivery(uint256 escrowId, uint64 seq, uint64 timestamp, bytes32 location, int32 maxTemperature)
        external
        view
        returns (bytes32);
}
