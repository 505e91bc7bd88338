// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";

import {DeviceEventVerifier} from "./DeviceEventVerifier.sol";
import {IDeviceRegistry} from "./interfaces/IDeviceRegistry.sol";
import {IMeteredBilling} from "./interfaces/IMeteredBilling.sol";
import {IOptimisticBilling} from "./interfaces/IOptimisticBilling.sol";
import {Funds} from "./money/Funds.sol";
import {OptimisticBatches} from "./OptimisticBatches.sol";

/// @title OptimisticBilling: metered billing from bonded batch commitments, fraud proofs and claims.
/// @notice The agreement lifecycle, tariffs, deposit, arrears and suspension are those of {MeteredBilling}; only the
/// way readings arrive differs (see {IOptimisticBilling}). Why the bill cannot depend on what the relayer commits:
/// the register is cumulative and a claim bills `cost(last claimed register → claimed register)` and only moves
/// forward, so the total billed for reaching a register is the same whatever subset, order or batching was
/// committed — and every claimable reading carries a device signature that stood unchallenged for a window.
///
/// Time: a leaf is judged as of its batch's commit (the relay time of direct settlement): key retirement and the
/// clock-skew rule use `committedAt`, and the seq/register/timestamp rules use the agreement's last claimed reading
/// only when that claim came before the commit, so a reading that was valid when posted can never be slashed by a
/// claim made afterwards (a claim still refuses it: claims only move forward).
///
/// The batches, the bond and the window are {OptimisticBatches}'; this contract supplies the readings' layout, leaf,
/// faults and claims.
contract OptimisticBilling is IOptimisticBilling, DeviceEventVerifier, OptimisticBatches {
    bytes32 public constant READING_TYPEHASH =
        keccak256("Reading(uint256 agreementId,uint64 seq,uint64 timestamp,uint256 value)");

    /// @notice Bytes of the reading a {challenge} or {claim} carries (the layout of {IMeteredBilling-settle}).
    uint256 public constant PACKED_READING_SIZE = 114;

    /// @notice Bytes per reading in a batch's data, after its header and agreement table (see
    /// {IOptimisticBilling-commit}).
    uint256 public constant BATCH_ITEM_SIZE = 82;

    /// @inheritdoc IOptimisticBilling
    uint256 public constant MAX_BATCH_READINGS = 4_096;

    /// @inheritdoc IOptimisticBilling
    uint256 public constant AGREEMENT_ID_FLAG = 1 << 63;

    uint256 private constant _METER_KINDS =
        (1 << uint8(IDeviceRegistry.DeviceKind.Meter)) | (1 << uint8(IDeviceRegistry.DeviceKind.Vehicle));

    struct Meter {
        uint96 prepaid;
        uint64 lastValue;
        uint40 lastSeq;
        uint40 lastTimestamp;
        IMeteredBilling.AgreementStatus status;
    }

    /// @dev The first slot holds what a claim reads and writes, so a claim touches one cold slot of the terms.
    struct Terms {
        uint64 startValue;
        uint64 closeAt;
        /// @dev Block time the last* fields of the {Meter} were written (accept or claim).
        uint40 stateAt;
        uint32 noticePeriod;
        address provider;
        address consumer;
        address token;
        uint128 deposited;
        uint128 withdrawn;
        uint256 arrears;
    }

    struct Reading {
        uint256 id;
        uint256 seq;
        uint256 timestamp;
        uint256 value;
        bytes32 r;
        bytes32 vs;
    }

    IMeteredBilling private immutable _TARIFFS;

    mapping(uint256 agreementId => Meter) private _meters;
    mapping(uint256 agreementId => Terms) private _terms;
    uint64 private _agreementCount;

    /// @dev `challengeWindow_` within [{MIN_CHALLENGE_WINDOW}, {MAX_CHALLENGE_WINDOW}], `bond_` > 0 (wei).
    constructor(IDeviceRegistry registry_, IMeteredBilling tariffs_, uint64 challengeWindow_, uint256 bond_)
        DeviceEventVerifier(registry_)
        OptimisticBatches(challengeWindow_, bond_)
    {
        if (address(tariffs_) == address(0)) revert ZeroAddress();
        _TARIFFS = tariffs_;
    }

    // ---------------------------------------------------------------- agreements

    /// @inheritdoc IOptimisticBilling
    function offer(
        address consumer,
        address device,
        uint32 tariffId,
        address token,
        uint64 startValue,
        uint32 noticePeriod
    ) external returns (uint256 agreementId) {
        if (consumer == address(0)) revert ZeroAddress();
        if (!_tariffExists(tariffId)) revert UnknownTariff(tariffId);
        IDeviceRegistry.Device memory d = _REGISTRY.deviceOf(device);
        if (d.status != IDeviceRegistry.DeviceStatus.Active) revert UnknownDevice(device);
        if ((_METER_KINDS >> uint8(d.kind)) & 1 == 0) revert WrongDeviceKind(device);

        // The flag keeps these ids apart from {MeteredBilling}'s, minted the same way with a count of its own: a
        // uint64 count that grows by one per offer never reaches bit 63, in either contract.
        agreementId =
            (uint256(uint160(device)) << 96) | (uint256(tariffId) << 64) | AGREEMENT_ID_FLAG | ++_agreementCount;
        _terms[agreementId] = Terms({
            startValue: startValue,
            closeAt: 0,
            stateAt: 0,
            noticePeriod: noticePeriod,
            provider: msg.sender,
            consumer: consumer,
            token: token,
            deposited: 0,
            withdrawn: 0,
            arrears: 0
        });
        _meters[agreementId].status = IMeteredBilling.AgreementStatus.Offered;
        emit AgreementOffered(agreementId, msg.sender, consumer, device, token, tariffId, startValue, noticePeriod);
    }

    /// @inheritdoc IOptimisticBilling
    function cancelOffer(uint256 agreementId) external {
        Meter storage m = _existing(agreementId);
        Terms storage t = _terms[agreementId];
        if (msg.sender != t.provider && msg.sender != t.consumer) revert NotProvider(agreementId, msg.sender);
        if (m.status != IMeteredBilling.AgreementStatus.Offered) revert WrongStatus(agreementId, m.status);
        m.status = IMeteredBilling.AgreementStatus.Cancelled;
        emit OfferCancelled(agreementId, msg.sender);
    }

    /// @inheritdoc IOptimisticBilling
    function accept(uint256 agreementId, uint256 deposit, uint64 startValue) external payable nonReentrant {
        Meter storage m = _existing(agreementId);
        Terms storage t = _terms[agreementId];
        if (msg.sender != t.consumer) revert NotConsumer(agreementId, msg.sender);
        if (m.status != IMeteredBilling.AgreementStatus.Offered) revert WrongStatus(agreementId, m.status);
        if (startValue != t.startValue) {
            revert TermsMismatch(agreementId, bytes32(uint256(t.startValue)), bytes32(uint256(startValue)));
        }
        if (deposit == 0) revert ZeroAmount();
        if (deposit > type(uint96).max) revert BalanceOverflow(deposit);

        _meters[agreementId] = Meter({
            prepaid: uint96(deposit),
            lastValue: t.startValue,
            lastSeq: 0,
            lastTimestamp: uint40(block.timestamp),
            status: IMeteredBilling.AgreementStatus.Active
        });
        t.deposited = uint128(deposit);
        t.stateAt = uint40(block.timestamp);
        emit AgreementAccepted(agreementId, deposit);
        Funds.pullExact(t.token, deposit);
    }

    /// @inheritdoc IOptimisticBilling
    function topUp(uint256 agreementId, uint256 amount) external payable nonReentrant {
        Meter storage m = _existing(agreementId);
        IMeteredBilling.AgreementStatus status = m.status;
        if (status != IMeteredBilling.AgreementStatus.Active && status != IMeteredBilling.AgreementStatus.Suspended) {
            revert WrongStatus(agreementId, status);
        }
        if (amount == 0) revert ZeroAmount();
        Terms storage t = _terms[agreementId];
        uint256 arrears = t.arrears;
        uint256 arrearsPaid = amount < arrears ? amount : arrears;
        uint256 newPrepaid = uint256(m.prepaid) + (amount - arrearsPaid);
        if (newPrepaid > type(uint96).max) revert BalanceOverflow(newPrepaid);
        uint256 newDeposited = uint256(t.deposited) + amount;
        if (newDeposited > type(uint128).max) revert BalanceOverflow(newDeposited);

        t.arrears = arrears - arrearsPaid;
        m.prepaid = uint96(newPrepaid);
        t.deposited = uint128(newDeposited);
        emit ToppedUp(agreementId, msg.sender, amount, arrearsPaid);
        if (status == IMeteredBilling.AgreementStatus.Suspended && arrears == arrearsPaid) {
            m.status = IMeteredBilling.AgreementStatus.Active;
            emit AgreementResumed(agreementId);
        }
        Funds.pullExact(t.token, amount);
    }

    // ---------------------------------------------------------------- payouts and closing

    /// @inheritdoc IOptimisticBilling
    function withdrawEarnings(uint256 agreementId) external nonReentrant returns (uint256 amount) {
        Meter storage m = _existing(agreementId);
        Terms storage t = _terms[agreementId];
        if (msg.sender != t.provider) revert NotProvider(agreementId, msg.sender);
        amount = _earnings(m, t);
        if (amount == 0) revert NoEarnings(agreementId);
        // earnings <= deposited, which fits uint128.
        t.withdrawn += uint128(amount);
        emit EarningsWithdrawn(agreementId, msg.sender, amount);
        Funds.push(t.token, msg.sender, amount);
    }

    /// @inheritdoc IOptimisticBilling
    function requestClose(uint256 agreementId) external {
        Meter storage m = _existing(agreementId);
        Terms storage t = _terms[agreementId];
        if (msg.sender != t.consumer) revert NotConsumer(agreementId, msg.sender);
        if (m.status != IMeteredBilling.AgreementStatus.Active && m.status != IMeteredBilling.AgreementStatus.Suspended)
        {
            revert WrongStatus(agreementId, m.status);
        }
        if (t.closeAt != 0) return;
        uint64 closeAt = uint64(block.timestamp) + t.noticePeriod;
        t.closeAt = closeAt;
        emit CloseRequested(agreementId, closeAt);
    }

    /// @inheritdoc IOptimisticBilling
    function close(uint256 agreementId) external nonReentrant returns (uint256 refund) {
        Meter storage m = _existing(agreementId);
        Terms storage t = _terms[agreementId];
        if (msg.sender != t.consumer) revert NotConsumer(agreementId, msg.sender);
        if (m.status != IMeteredBilling.AgreementStatus.Active && m.status != IMeteredBilling.AgreementStatus.Suspended)
        {
            revert WrongStatus(agreementId, m.status);
        }
        if (t.closeAt == 0) revert CloseNotRequested(agreementId);
        uint256 notBefore = uint256(t.closeAt) + closeDelay() + 1;
        if (block.timestamp < notBefore) revert TooEarly(agreementId, notBefore, block.timestamp);
        refund = m.prepaid;
        m.prepaid = 0;
        m.status = IMeteredBilling.AgreementStatus.Closed;
        // The refund leaves the deposit, so earnings (deposited − prepaid − withdrawn) stay what was billed.
        t.deposited -= uint128(refund);
        emit AgreementClosed(agreementId, refund);
        _pay(t.token, t.consumer, refund);
    }

    /// @notice Seconds after `closeAt` before a close: the relay grace, the challenge window of a batch committed at
    /// its end, and one more grace to claim it.
    function closeDelay() public view returns (uint256) {
        return 2 * uint256(SETTLEMENT_GRACE) + CHALLENGE_WINDOW;
    }

    // ---------------------------------------------------------------- views

    /// @inheritdoc IOptimisticBilling
    function agreementOf(uint256 agreementId) external view returns (IMeteredBilling.Agreement memory a) {
        Meter memory m = _meters[agreementId];
        Terms memory t = _terms[agreementId];
        bool exists = t.provider != address(0);
        a = IMeteredBilling.Agreement({
            provider: t.provider,
            consumer: t.consumer,
            device: exists ? address(uint160(agreementId >> 96)) : address(0),
            token: t.token,
            tariffId: exists ? uint32(agreementId >> 64) : 0,
            status: m.status,
            noticePeriod: t.noticePeriod,
            closeAt: t.closeAt,
            startValue: t.startValue,
            lastValue: m.lastValue,
            lastSeq: m.lastSeq,
            lastTimestamp: m.lastTimestamp,
            prepaid: m.prepaid,
            arrears: t.arrears,
            deposited: t.deposited,
            withdrawn: t.withdrawn
        });
    }

    /// @inheritdoc IOptimisticBilling
    function earningsOf(uint256 agreementId) external view returns (uint256) {
        return _earnings(_meters[agreementId], _terms[agreementId]);
    }

    /// @inheritdoc IOptimisticBilling
    function tariffs() external view returns (address) {
        return address(_TARIFFS);
    }

    /// @inheritdoc IOptimisticBilling
    function hashReading(uint256 agreementId, uint64 seq, uint64 timestamp, uint256 value)
        external
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(READING_TYPEHASH, agreementId, seq, timestamp, value)));
    }

    // ---------------------------------------------------------------- the readings of a batch

    /// @dev {IOptimisticBilling}'s batch layout: the readings, checked to fit {MAX_BATCH_READINGS}.
    function _itemsIn(bytes calldata data) internal pure override returns (uint256 count) {
        bool wellShaped;
        (wellShaped, count) = _tableItems(data, BATCH_ITEM_SIZE, MAX_BATCH_READINGS);
        if (!wellShaped) revert MalformedBatch(data.length);
    }

    /// @dev The leaves of a batch's readings; not well formed when an item points past the agreement table.
    function _leaves(bytes calldata data) internal view override returns (bool wellFormed, bytes32[] memory leaves) {
        uint256 agreements = uint16(bytes2(data[0:2]));
        uint256 at = _BATCH_HEADER + 32 * agreements;
        uint256 n = (data.length - at) / BATCH_ITEM_SIZE;
        bytes32 separator = _domainSeparatorV4();
        leaves = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            bool known;
            (known, leaves[i]) = _itemLeaf(data, at, agreements, separator);
            if (!known) return (false, leaves);
            at += BATCH_ITEM_SIZE;
        }
        return (true, leaves);
    }

    function _leafOfItem(bytes calldata reading) internal view override returns (bytes32) {
        return _leaf(_decode(reading));
    }

    function _fault(bytes calldata reading, uint256 committedAt) internal view override returns (RejectReason) {
        return _readingFault(_decode(reading), committedAt);
    }

    /// @dev Bill the reading from the agreement's last claimed one, if it moves the agreement forward.
    function _claim(bytes calldata reading, uint256 batchId) internal override {
        Reading memory rd = _decode(reading);
        Meter storage m = _meters[rd.id];
        RejectReason reason = _checkClaim(m, rd);
        if (reason != RejectReason.None) revert EventRejected(rd.id, uint64(rd.seq), reason);
        _bill(m, rd, batchId);
    }

    // ---------------------------------------------------------------- internals

    /// @dev The settlement rules a challenge can prove broken, as of the batch's commit (see the contract notice).
    function _readingFault(Reading memory rd, uint256 committedAt) private view returns (RejectReason reason) {
        Meter storage m = _meters[rd.id];
        if (m.status == IMeteredBilling.AgreementStatus.None) return RejectReason.UnknownTarget;
        if (rd.timestamp > committedAt + MAX_CLOCK_SKEW) return RejectReason.TimestampInFuture;
        if (_terms[rd.id].stateAt < committedAt) {
            if (rd.seq <= m.lastSeq) return RejectReason.Replayed;
            if (rd.value < m.lastValue) return RejectReason.CounterRollback;
            if (rd.timestamp < m.lastTimestamp) return RejectReason.TimestampTooOld;
        }
        return _signerFaultAsOf(
            _structHash(rd), rd.r, rd.vs, address(uint160(rd.id >> 96)), _METER_KINDS, rd.timestamp, committedAt
        );
    }

    /// @dev The forward-only rules of a claim, against the agreement now (as direct settlement checks a reading).
    function _checkClaim(Meter storage m, Reading memory rd) private view returns (RejectReason) {
        IMeteredBilling.AgreementStatus status = m.status;
        if (status == IMeteredBilling.AgreementStatus.None) return RejectReason.UnknownTarget;
        if (rd.seq <= m.lastSeq) return RejectReason.Replayed;
        if (status != IMeteredBilling.AgreementStatus.Active) {
            return status == IMeteredBilling.AgreementStatus.Suspended ? RejectReason.Suspended : RejectReason.NotActive;
        }
        if (rd.value < m.lastValue) return RejectReason.CounterRollback;
        if (rd.timestamp < m.lastTimestamp) return RejectReason.TimestampTooOld;
        uint64 closeAt = _terms[rd.id].closeAt;
        if (closeAt != 0 && rd.timestamp > closeAt) return RejectReason.AfterEnd;
        return RejectReason.None;
    }

    function _bill(Meter storage m, Reading memory rd, uint256 batchId) private {
        Terms storage t = _terms[rd.id];
        uint64 start = t.startValue;
        uint256 cost = _TARIFFS.costOf(uint32(rd.id >> 64), m.lastValue - start, uint64(rd.value) - start);
        uint256 prepaid = m.prepaid;
        uint256 billed = cost > prepaid ? prepaid : cost;
        // billed <= prepaid; seq and timestamp < 2^40 and value < 2^64 by the packed layout.
        m.prepaid = uint96(prepaid - billed);
        m.lastValue = uint64(rd.value);
        m.lastSeq = uint40(rd.seq);
        m.lastTimestamp = uint40(rd.timestamp);
        t.stateAt = uint40(block.timestamp);
        emit ReadingClaimed(rd.id, batchId, uint64(rd.seq), billed);
        if (billed != cost) {
            m.status = IMeteredBilling.AgreementStatus.Suspended;
            uint256 arrears = t.arrears + (cost - billed);
            t.arrears = arrears;
            emit AgreementSuspended(rd.id, arrears);
        }
    }

    /// @dev The leaf of the batch item at byte `at`; not `known` when its index is past the table of `agreements` or
    /// its timestamp beyond the 5 bytes of a packed reading (no claim or challenge could then name it).
    function _itemLeaf(bytes calldata data, uint256 at, uint256 agreements, bytes32 separator)
        private
        pure
        returns (bool known, bytes32)
    {
        // index 2 | seq 5 | timestamp − base 3 | value 8 | the first 14 bytes of r
        uint256 head = uint256(bytes32(data[at:at + 32]));
        uint256 index = head >> 240;
        uint256 time = uint40(bytes5(data[2:7])) + uint24(head >> 176);
        if (index >= agreements || time > type(uint40).max) return (false, bytes32(0));
        uint256 id = uint256(bytes32(data[_BATCH_HEADER + 32 * index:_BATCH_HEADER + 32 + 32 * index]));
        bytes32 digest = MessageHashUtils.toTypedDataHash(
            separator, _structHash(id, uint40(head >> 200), time, uint64(head >> 112))
        );
        bytes calldata signature = data[at + 18:at + 82];
        return (true, _leafOf(digest, bytes32(signature[0:32]), bytes32(signature[32:64])));
    }

    /// @dev Item layout (114 bytes): agreementId 32 | seq 5 | timestamp 5 | value 8 | r 32 | vs 32.
    function _decode(bytes calldata reading) private pure returns (Reading memory rd) {
        if (reading.length != PACKED_READING_SIZE) revert MalformedBatch(reading.length);
        uint256 fields = uint256(bytes32(reading[32:64]));
        rd = Reading({
            id: uint256(bytes32(reading[0:32])),
            seq: fields >> 216,
            timestamp: uint40(fields >> 176),
            value: uint64(fields >> 112),
            r: bytes32(reading[50:82]),
            vs: bytes32(reading[82:114])
        });
    }

    function _structHash(Reading memory rd) private pure returns (bytes32) {
        return _structHash(rd.id, rd.seq, rd.timestamp, rd.value);
    }

    /// @dev keccak256(abi.encode(READING_TYPEHASH, id, seq, timestamp, value)), in scratch memory past the free
    /// pointer (a batch's root hashes thousands: allocating each encoding would grow memory quadratically in cost).
    function _structHash(uint256 id, uint256 seq, uint256 time, uint256 value) private pure returns (bytes32 h) {
        bytes32 typeHash = READING_TYPEHASH;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, typeHash)
            mstore(add(ptr, 0x20), id)
            mstore(add(ptr, 0x40), seq)
            mstore(add(ptr, 0x60), time)
            mstore(add(ptr, 0x80), value)
            h := keccak256(ptr, 0xa0)
        }
    }

    function _leaf(Reading memory rd) private view returns (bytes32) {
        return _leafOf(_hashTypedDataV4(_structHash(rd)), rd.r, rd.vs);
    }

    function _tariffExists(uint32 tariffId) private view returns (bool) {
        // costOf reverts for an unknown tariff and prices nothing otherwise: only whether it reverts matters.
        // slither-disable-next-line unused-return (the price of nothing is 0; the call is an existence check)
        try _TARIFFS.costOf(tariffId, 0, 0) returns (uint256) {
            return true;
        } catch {
            return false;
        }
    }

    function _existing(uint256 agreementId) private view returns (Meter storage m) {
        m = _meters[agreementId];
        if (m.status == IMeteredBilling.AgreementStatus.None) revert UnknownAgreement(agreementId);
    }

    function _earnings(Meter storage m, Terms storage t) private view returns (uint256) {
        return uint256(t.deposited) - m.prepaid - t.withdrawn;
    }
}
