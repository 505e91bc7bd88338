// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {Hashes} from "@openzeppelin/contracts/utils/cryptography/Hashes.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

import {DeviceEventVerifier} from "./DeviceEventVerifier.sol";
import {IDeviceRegistry} from "./interfaces/IDeviceRegistry.sol";
import {IMeteredBilling} from "./interfaces/IMeteredBilling.sol";
import {IOptimisticBilling} from "./interfaces/IOptimisticBilling.sol";
import {Funds} from "./money/Funds.sol";
import {PullPayments} from "./money/PullPayments.sol";

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
contract OptimisticBilling is IOptimisticBilling, DeviceEventVerifier, PullPayments {
    bytes32 public constant READING_TYPEHASH =
        keccak256("Reading(uint256 agreementId,uint64 seq,uint64 timestamp,uint256 value)");

    /// @inheritdoc IOptimisticBilling
    uint64 public constant CHALLENGE_WINDOW = 1 hours;

    /// @inheritdoc IOptimisticBilling
    uint256 public constant BOND = 0.1 ether;

    /// @notice Bytes per reading in a batch (the layout of {IMeteredBilling-settle}).
    uint256 public constant PACKED_READING_SIZE = 114;

    uint256 private constant _METER_KINDS =
        (1 << uint8(IDeviceRegistry.DeviceKind.Meter)) | (1 << uint8(IDeviceRegistry.DeviceKind.Vehicle));

    struct Meter {
        uint96 prepaid;
        uint64 lastValue;
        uint40 lastSeq;
        uint40 lastTimestamp;
        IMeteredBilling.AgreementStatus status;
    }

    struct Terms {
        address provider;
        uint32 noticePeriod;
        uint64 closeAt;
        address consumer;
        uint64 startValue;
        /// @dev Block time the last* fields of the {Meter} were written (accept or claim).
        uint40 stateAt;
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
    mapping(uint256 batchId => Batch) private _batches;
    uint64 private _agreementCount;
    uint64 private _batchCount;

    constructor(IDeviceRegistry registry_, IMeteredBilling tariffs_) DeviceEventVerifier(registry_) {
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

        agreementId = (uint256(uint160(device)) << 96) | (uint256(tariffId) << 64) | ++_agreementCount;
        _terms[agreementId] = Terms({
            provider: msg.sender,
            noticePeriod: noticePeriod,
            closeAt: 0,
            consumer: consumer,
            startValue: startValue,
            stateAt: 0,
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

    // ---------------------------------------------------------------- batches

    /// @inheritdoc IOptimisticBilling
    function commit(bytes32 root, bytes calldata readings) external payable returns (uint256 batchId) {
        uint256 len = readings.length;
        if (len == 0 || len % PACKED_READING_SIZE != 0) revert MalformedBatch(len);
        if (msg.value != BOND) revert WrongBond(BOND, msg.value);
        bytes32 dataHash = keccak256(readings);
        batchId = ++_batchCount;
        _batches[batchId] = Batch({
            root: root,
            dataHash: dataHash,
            relayer: msg.sender,
            committedAt: uint40(block.timestamp),
            status: BatchStatus.Committed
        });
        emit BatchCommitted(batchId, msg.sender, root, dataHash, len / PACKED_READING_SIZE);
    }

    /// @inheritdoc IOptimisticBilling
    function challenge(uint256 batchId, bytes calldata reading, bytes32[] calldata proof) external nonReentrant {
        Batch storage b = _liveBatch(batchId);
        uint256 endsAt = uint256(b.committedAt) + CHALLENGE_WINDOW;
        if (block.timestamp > endsAt) revert ChallengeWindowClosed(batchId, endsAt);
        Reading memory rd = _decode(reading);
        bytes32 leaf = _leaf(rd);
        if (!MerkleProof.verifyCalldata(proof, b.root, leaf)) revert NotInBatch(batchId, leaf);
        RejectReason reason = _fault(rd, b.committedAt);
        if (reason == RejectReason.None) revert NothingProven(batchId, leaf);
        _void(batchId, b, leaf, reason);
    }

    /// @inheritdoc IOptimisticBilling
    function challengeData(uint256 batchId, bytes calldata readings) external nonReentrant {
        Batch storage b = _liveBatch(batchId);
        uint256 endsAt = uint256(b.committedAt) + CHALLENGE_WINDOW;
        if (block.timestamp > endsAt) revert ChallengeWindowClosed(batchId, endsAt);
        bytes32 dataHash = keccak256(readings);
        if (dataHash != b.dataHash) revert NotBatchData(batchId, dataHash);
        // slither-disable-next-line incorrect-equality (a hash comparison, not a balance)
        if (_root(readings) == b.root) revert NothingProven(batchId, bytes32(0));
        _void(batchId, b, bytes32(0), RejectReason.None);
    }

    /// @inheritdoc IOptimisticBilling
    function claim(uint256 batchId, bytes calldata reading, bytes32[] calldata proof) external {
        Batch storage b = _liveBatch(batchId);
        uint256 endsAt = uint256(b.committedAt) + CHALLENGE_WINDOW;
        if (block.timestamp <= endsAt) revert ChallengeWindowOpen(batchId, endsAt);
        Reading memory rd = _decode(reading);
        bytes32 leaf = _leaf(rd);
        if (!MerkleProof.verifyCalldata(proof, b.root, leaf)) revert NotInBatch(batchId, leaf);
        Meter storage m = _meters[rd.id];
        RejectReason reason = _checkClaim(m, rd);
        if (reason != RejectReason.None) revert EventRejected(rd.id, uint64(rd.seq), reason);
        _bill(m, rd, batchId);
    }

    /// @inheritdoc IOptimisticBilling
    function releaseBond(uint256 batchId) external nonReentrant {
        Batch storage b = _batches[batchId];
        BatchStatus status = b.status;
        if (status == BatchStatus.None) revert UnknownBatch(batchId);
        if (status != BatchStatus.Committed) revert BatchNotLive(batchId, status);
        uint256 endsAt = uint256(b.committedAt) + CHALLENGE_WINDOW;
        if (block.timestamp <= endsAt) revert ChallengeWindowOpen(batchId, endsAt);
        b.status = BatchStatus.Released;
        address relayer = b.relayer;
        emit BondReleased(batchId, relayer, BOND);
        _pay(address(0), relayer, BOND);
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
    function closeDelay() public pure returns (uint256) {
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
    function batchOf(uint256 batchId) external view returns (Batch memory) {
        return _batches[batchId];
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

    /// @inheritdoc IOptimisticBilling
    function leafOf(bytes calldata reading) external view returns (bytes32) {
        return _leaf(_decode(reading));
    }

    // ---------------------------------------------------------------- internals

    /// @dev The settlement rules a challenge can prove broken, as of the batch's commit (see the contract notice).
    function _fault(Reading memory rd, uint256 committedAt) private view returns (RejectReason reason) {
        Meter storage m = _meters[rd.id];
        if (m.status == IMeteredBilling.AgreementStatus.None) return RejectReason.UnknownTarget;
        if (rd.timestamp > committedAt + MAX_CLOCK_SKEW) return RejectReason.TimestampInFuture;
        if (_terms[rd.id].stateAt < committedAt) {
            if (rd.seq <= m.lastSeq) return RejectReason.Replayed;
            if (rd.value < m.lastValue) return RejectReason.CounterRollback;
            if (rd.timestamp < m.lastTimestamp) return RejectReason.TimestampTooOld;
        }
        address device = address(uint160(rd.id >> 96));
        reason = _checkSigner(_structHash(rd), rd.r, rd.vs, device, _METER_KINDS, uint64(rd.timestamp));
        if (reason == RejectReason.KeyRotated || reason == RejectReason.DeviceRevoked) {
            // The verifier judges retirement against now; a leaf is judged against its relay time, the commit. A key
            // retired after the commit was current when the leaf was relayed (as direct settlement would have seen
            // it, whatever the reading's timestamp within the skew); one retired before counts for readings dated by
            // its retirement and relayed within one grace of it.
            address signer = ECDSA.recover(_hashTypedDataV4(_structHash(rd)), rd.r, rd.vs);
            // slither-disable-next-line unused-return (only the retirement time is needed: the device, kind and status were checked above)
            (,,, uint64 retiredAt) = _REGISTRY.keyInfo(signer);
            if (
                retiredAt > committedAt
                    || (rd.timestamp <= retiredAt && committedAt <= uint256(retiredAt) + SETTLEMENT_GRACE)
            ) {
                return RejectReason.None;
            }
        }
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

    /// @dev Effects, event, then the bond to the challenger through the pull-payment ledger.
    function _void(uint256 batchId, Batch storage b, bytes32 leaf, RejectReason reason) private {
        b.status = BatchStatus.Voided;
        emit BatchVoided(batchId, msg.sender, leaf, reason);
        _pay(address(0), msg.sender, BOND);
    }

    function _liveBatch(uint256 batchId) private view returns (Batch storage b) {
        b = _batches[batchId];
        BatchStatus status = b.status;
        if (status == BatchStatus.None) revert UnknownBatch(batchId);
        if (status == BatchStatus.Voided) revert BatchNotLive(batchId, status);
    }

    /// @dev The tree of {IOptimisticBilling} over packed readings (length checked at commit).
    function _root(bytes calldata readings) private view returns (bytes32) {
        uint256 n = readings.length / PACKED_READING_SIZE;
        bytes32[] memory level = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            level[i] = _leaf(_decode(readings[i * PACKED_READING_SIZE:(i + 1) * PACKED_READING_SIZE]));
        }
        while (n > 1) {
            uint256 half = (n + 1) / 2;
            for (uint256 i = 0; i < half; ++i) {
                uint256 left = 2 * i;
                level[i] = left + 1 < n ? Hashes.commutativeKeccak256(level[left], level[left + 1]) : level[left];
            }
            n = half;
        }
        return level[0];
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
        return keccak256(abi.encode(READING_TYPEHASH, rd.id, rd.seq, rd.timestamp, rd.value));
    }

    /// @dev keccak256(digest ‖ item): the digest binds the leaf to this contract's EIP-712 domain.
    function _leaf(Reading memory rd) private view returns (bytes32) {
        return keccak256(
            abi.encodePacked(
                _hashTypedDataV4(_structHash(rd)),
                rd.id,
                uint40(rd.seq),
                uint40(rd.timestamp),
                uint64(rd.value),
                rd.r,
                rd.vs
            )
        );
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
