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
///
/// Storage: the terms take six slots that only creation writes; each escrow's status word holds its state in the low
/// byte and, while Funded, a 248-bit seal (keccak) of the terms a delivery needs, or once Released the delivery's
/// seq. {confirmDeliveriesPacked} reads that one word: the relayer sends the terms beside each delivery and the
/// contract checks them against the seal, so a confirmation touches one escrow slot (docs/BENCHMARKS.md). Terms
/// that do not match the seal are read from storage instead: a relayer cannot change an outcome, only pay more.
contract DeliveryEscrow is IDeliveryEscrow, DeviceEventVerifier, PullPayments {
    bytes32 public constant DELIVERY_TYPEHASH =
        keccak256("Delivery(uint256 escrowId,uint64 seq,uint64 timestamp,bytes32 location,int32 maxTemperature)");

    /// @notice The cold-chain refund share is expressed in basis points of the amount.
    uint16 public constant MAX_BPS = 10_000;

    /// @notice Bytes per record of {confirmDeliveriesPacked}: 124 of delivery, {TERMS_SIZE} of terms; 40 fewer
    /// when the record reuses the previous one's seller and token ({SAME_PARTY}).
    uint256 public constant RECORD_SIZE = 222;

    /// @notice Set in a record's escrowId field (whose top bit no escrow id uses): seller and token are left out
    /// and taken from the previous record.
    uint64 public constant SAME_PARTY = 1 << 63;

    /// @notice Bytes of the packed terms {deliveryTerms} returns.
    uint256 public constant TERMS_SIZE = 98;

    uint256 private constant _TRACKER_KIND = 1 << uint8(IDeviceRegistry.DeviceKind.Tracker);

    /// @dev Creation-time terms, packed in six slots: buyer | seller | device | token, temperatureLimit,
    /// penaltyBps | amount, createdAt, deadline | destination.
    struct Terms {
        address buyer;
        address seller;
        address device;
        address token;
        int32 temperatureLimit;
        uint16 penaltyBps;
        uint128 amount;
        uint64 createdAt;
        uint64 deadline;
        bytes32 destination;
    }

    /// @dev A run of credits to one (token, seller) not yet written to the ledger.
    struct Run {
        address token;
        address account;
        uint256 amount;
    }

    mapping(uint256 escrowId => Terms) private _terms;
    /// @dev EscrowState in bits 0..7; above it the seal while Funded, the delivery's seq once Released, else 0.
    mapping(uint256 escrowId => uint256) private _status;
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
        Terms memory t = Terms({
            buyer: msg.sender,
            seller: seller,
            device: device,
            token: token,
            temperatureLimit: temperatureLimit,
            penaltyBps: penaltyBps,
            amount: uint128(amount),
            createdAt: uint64(block.timestamp),
            deadline: deadline,
            destination: destination
        });
        _terms[escrowId] = t;
        _status[escrowId] = _seal(_packTerms(t), destination) | uint256(EscrowState.Funded);
        emit EscrowCreated(
            escrowId, msg.sender, seller, device, token, amount, destination, deadline, temperatureLimit, penaltyBps
        );
        Funds.pullExact(token, amount);
    }

    /// @inheritdoc IDeliveryEscrow
    function confirmDelivery(SignedDelivery calldata delivery) external {
        SignedDelivery memory dl = delivery;
        // slither-disable-next-line uninitialized-local (zero terms on purpose: _confirm then reads the escrow from storage)
        Terms memory t;
        (RejectReason reason, uint256 toSeller) = _confirm(dl, t, _status[delivery.escrowId], false);
        if (reason != RejectReason.None) revert EventRejected(delivery.escrowId, delivery.seq, reason);
        _credit(t.token, t.seller, toSeller);
    }

    /// @inheritdoc IDeliveryEscrow
    function confirmDeliveries(SignedDelivery[] calldata deliveries) external returns (uint256 confirmed) {
        // slither-disable-next-line uninitialized-local (zero terms on purpose: _confirm then reads the escrow from storage)
        Terms memory t;
        // slither-disable-next-line uninitialized-local (an empty run: no seller credited yet)
        Run memory run;
        uint256 n = deliveries.length;
        for (uint256 i = 0; i < n; ++i) {
            SignedDelivery memory dl = deliveries[i];
            (RejectReason reason, uint256 toSeller) = _confirm(dl, t, _status[dl.escrowId], false);
            if (reason != RejectReason.None) {
                emit DeliveryRejected(dl.escrowId, dl.seq, reason);
                continue;
            }
            // Bounded by the array length.
            unchecked {
                ++confirmed;
            }
            _accrue(run, t, toSeller);
        }
        _flush(run);
    }

    /// @inheritdoc IDeliveryEscrow
    function confirmDeliveriesPacked(bytes calldata batch) external returns (uint256 confirmed) {
        // One delivery, one terms and one credit run in memory for the whole batch: decoding overwrites them, so
        // memory (whose cost grows with the square of its size) does not grow with the batch.
        SignedDelivery memory dl;
        Terms memory t;
        Run memory run;
        uint256 p;
        uint256 end;
        assembly ("memory-safe") {
            p := batch.offset
            end := add(p, batch.length)
        }
        while (p < end) {
            (uint256 status, bool sealed_, uint256 next) = _decode(p, dl, t);
            if (next > end) revert MalformedBatch(batch.length);
            p = next;
            (RejectReason reason, uint256 toSeller) = _confirm(dl, t, status, sealed_);
            // confirmed is bounded by the number of records.
            unchecked {
                if (reason != RejectReason.None) {
                    emit DeliveryRejected(dl.escrowId, dl.seq, reason);
                    continue;
                }
                ++confirmed;
            }
            _accrue(run, t, toSeller);
        }
        _flush(run);
    }

    /// @dev Decode the record at calldata offset `p` into `dl` and the relayer's terms into `t` (buyer left 0;
    /// seller and token kept from the previous record under {SAME_PARTY}), and return the escrow's status word,
    /// whether those terms match its seal, and where the next record starts. `t.destination` is the delivery's
    /// location, so a match also proves the location is the destination. Layout: {confirmDeliveriesPacked}.
    function _decode(uint256 p, SignedDelivery memory dl, Terms memory t)
        private
        view
        returns (uint256 status, bool sealed_, uint256 next)
    {
        uint256 escrowId;
        bytes32 location;
        uint256 seal;
        assembly ("memory-safe") {
            let head := shr(192, calldataload(p))
            escrowId := and(head, 0x7fffffffffffffff)
            location := calldataload(add(p, 24))
            mstore(dl, escrowId)
            mstore(add(dl, 0x20), shr(192, calldataload(add(p, 8))))
            mstore(add(dl, 0x40), shr(192, calldataload(add(p, 16))))
            mstore(add(dl, 0x60), location)
            mstore(add(dl, 0x80), sar(224, calldataload(add(p, 56))))
            mstore(add(dl, 0xa0), calldataload(add(p, 60)))
            mstore(add(dl, 0xc0), calldataload(add(p, 92)))
            let q := add(p, 124)
            if iszero(shr(63, head)) {
                mstore(add(t, 0x20), shr(96, calldataload(q)))
                mstore(add(t, 0x60), shr(96, calldataload(add(q, 20))))
                q := add(q, 40)
            }
            mstore(add(t, 0x40), shr(96, calldataload(q)))
            mstore(add(t, 0xc0), shr(128, calldataload(add(q, 20))))
            mstore(add(t, 0xe0), shr(192, calldataload(add(q, 36))))
            mstore(add(t, 0x100), shr(192, calldataload(add(q, 44))))
            mstore(add(t, 0x80), sar(224, calldataload(add(q, 52))))
            mstore(add(t, 0xa0), shr(240, calldataload(add(q, 56))))
            mstore(add(t, 0x120), location)
            next := add(q, 58)
            // seal = keccak256(seller ‖ token ‖ the other 58 bytes of terms ‖ location), built in free memory that
            // is read at once and not kept.
            let fmp := mload(0x40)
            mstore(fmp, shl(96, mload(add(t, 0x20))))
            mstore(add(fmp, 20), shl(96, mload(add(t, 0x60))))
            calldatacopy(add(fmp, 40), q, 58)
            mstore(add(fmp, 98), location)
            seal := keccak256(fmp, 130)
        }
        status = _status[escrowId];
        // slither-disable-next-line incorrect-equality (a hash comparison, not a balance)
        sealed_ = status >> 8 == seal >> 8;
    }

    /// @dev Returns None after releasing the escrow (a cold-chain penalty credited to the buyer, the seller's
    /// share returned for the caller to credit), or the reason nothing changed. `status` is the escrow's status
    /// word; `sealed_` says `t` holds its terms already (checked against the seal), otherwise they are read from
    /// storage. An escrow already released reports Replayed so racing relayers can treat it as done.
    function _confirm(SignedDelivery memory dl, Terms memory t, uint256 status, bool sealed_)
        private
        returns (RejectReason, uint256 toSeller)
    {
        uint256 state = uint8(status);
        if (state != uint256(EscrowState.Funded)) {
            // slither-disable-next-line incorrect-equality (a state enum, not a balance)
            if (state == uint256(EscrowState.None)) return (RejectReason.UnknownTarget, 0);
            // slither-disable-next-line incorrect-equality (a state enum, not a balance)
            if (state == uint256(EscrowState.Released)) return (RejectReason.Replayed, 0);
            return (RejectReason.NotActive, 0);
        }
        uint256 escrowId = dl.escrowId;
        if (!sealed_) {
            _load(escrowId, t);
            if (dl.location != t.destination) return (RejectReason.WrongLocation, 0);
        }
        uint64 timestamp = dl.timestamp;
        if (timestamp > t.deadline) return (RejectReason.DeadlinePassed, 0);
        RejectReason reason = _checkTimestamp(timestamp, t.createdAt);
        if (reason != RejectReason.None) return (reason, 0);
        reason = _checkSigner(_structHash(dl), dl.r, dl.vs, t.device, _TRACKER_KIND, timestamp);
        if (reason != RejectReason.None) return (reason, 0);

        uint256 amount = t.amount;
        uint256 toBuyer = 0;
        if (t.penaltyBps != 0 && dl.maxTemperature > t.temperatureLimit) {
            // amount < 2^128 (createEscrow) so the product cannot overflow and revert a batch.
            toBuyer = amount * t.penaltyBps / MAX_BPS;
        }
        toSeller = amount - toBuyer;
        uint64 seq = dl.seq;
        _status[escrowId] = (uint256(seq) << 8) | uint256(EscrowState.Released);
        emit DeliveryConfirmed(escrowId, seq, toSeller, toBuyer);
        if (toBuyer != 0) _credit(t.token, _terms[escrowId].buyer, toBuyer);
        return (RejectReason.None, toSeller);
    }

    /// @dev Add a seller's share to the current run of credits, writing the run to the ledger first when this
    /// share goes to another (token, seller): one {Credited} and one ledger write per run, not per delivery.
    function _accrue(Run memory run, Terms memory t, uint256 toSeller) private {
        address token = t.token;
        address seller = t.seller;
        if (run.token != token || run.account != seller) {
            _flush(run);
            run.token = token;
            run.account = seller;
        }
        // Each share is below 2^128 and a batch cannot hold 2^128 items.
        unchecked {
            run.amount += toSeller;
        }
    }

    function _flush(Run memory run) private {
        if (run.amount != 0) {
            _credit(run.token, run.account, run.amount);
            run.amount = 0;
        }
    }

    /// @dev The Delivery struct hash, in free memory that is not kept (abi.encode would allocate per item).
    function _structHash(SignedDelivery memory dl) private pure returns (bytes32 h) {
        bytes32 typehash = DELIVERY_TYPEHASH;
        assembly ("memory-safe") {
            let fmp := mload(0x40)
            mstore(fmp, typehash)
            mstore(add(fmp, 0x20), mload(dl))
            mstore(add(fmp, 0x40), mload(add(dl, 0x20)))
            mstore(add(fmp, 0x60), mload(add(dl, 0x40)))
            mstore(add(fmp, 0x80), mload(add(dl, 0x60)))
            mstore(add(fmp, 0xa0), mload(add(dl, 0x80)))
            h := keccak256(fmp, 0xc0)
        }
    }

    /// @dev Copy the stored terms a delivery needs into `t` (the buyer is read only for a penalty).
    function _load(uint256 escrowId, Terms memory t) private view {
        Terms storage s = _terms[escrowId];
        t.seller = s.seller;
        t.device = s.device;
        t.token = s.token;
        t.temperatureLimit = s.temperatureLimit;
        t.penaltyBps = s.penaltyBps;
        t.amount = s.amount;
        t.createdAt = s.createdAt;
        t.deadline = s.deadline;
        t.destination = s.destination;
    }

    /// @dev The {deliveryTerms} encoding of `t`.
    function _packTerms(Terms memory t) private pure returns (bytes memory) {
        return abi.encodePacked(
            t.seller, t.token, t.device, t.amount, t.createdAt, t.deadline, t.temperatureLimit, t.penaltyBps
        );
    }

    /// @dev The seal with its low byte cleared for the state.
    function _seal(bytes memory packedTerms, bytes32 destination) private pure returns (uint256) {
        return uint256(keccak256(abi.encodePacked(packedTerms, destination))) >> 8 << 8;
    }

    /// @inheritdoc IDeliveryEscrow
    function refund(uint256 escrowId) external {
        Terms storage e = _funded(escrowId);
        address buyer = e.buyer;
        if (msg.sender != buyer) revert NotBuyer(escrowId, msg.sender);
        // Strictly after deadline + grace: a delivery signed at the deadline has the whole grace to arrive.
        uint256 notBefore = uint256(e.deadline) + SETTLEMENT_GRACE + 1;
        if (block.timestamp < notBefore) revert TooEarly(escrowId, notBefore, block.timestamp);
        _status[escrowId] = uint256(EscrowState.Refunded);
        uint256 amount = e.amount;
        emit EscrowRefunded(escrowId, amount);
        _credit(e.token, buyer, amount);
    }

    /// @inheritdoc IDeliveryEscrow
    function cancel(uint256 escrowId) external {
        Terms storage e = _funded(escrowId);
        if (msg.sender != e.seller) revert NotSeller(escrowId, msg.sender);
        _status[escrowId] = uint256(EscrowState.Cancelled);
        uint256 amount = e.amount;
        emit EscrowCancelled(escrowId, amount);
        _credit(e.token, e.buyer, amount);
    }

    /// @inheritdoc IDeliveryEscrow
    function escrowOf(uint256 escrowId) external view returns (Escrow memory) {
        Terms storage t = _terms[escrowId];
        uint256 status = _status[escrowId];
        EscrowState state = EscrowState(uint8(status));
        // slither-disable-next-line incorrect-equality (a state enum, not a balance)
        return Escrow({
            buyer: t.buyer,
            seller: t.seller,
            device: t.device,
            token: t.token,
            amount: t.amount,
            destination: t.destination,
            createdAt: t.createdAt,
            deadline: t.deadline,
            temperatureLimit: t.temperatureLimit,
            penaltyBps: t.penaltyBps,
            state: state,
            deliverySeq: state == EscrowState.Released ? uint64(status >> 8) : 0
        });
    }

    /// @inheritdoc IDeliveryEscrow
    function deliveryTerms(uint256 escrowId) external view returns (bytes memory) {
        // slither-disable-next-line incorrect-equality (a state enum, not a balance)
        if (EscrowState(uint8(_status[escrowId])) == EscrowState.None) revert UnknownEscrow(escrowId);
        Terms memory t = _terms[escrowId];
        return _packTerms(t);
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

    function _funded(uint256 escrowId) private view returns (Terms storage e) {
        EscrowState state = EscrowState(uint8(_status[escrowId]));
        // slither-disable-next-line incorrect-equality (a state enum, not a balance)
        if (state == EscrowState.None) revert UnknownEscrow(escrowId);
        if (state != EscrowState.Funded) revert NotFunded(escrowId, state);
        e = _terms[escrowId];
    }
}
