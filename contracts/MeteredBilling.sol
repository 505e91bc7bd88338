// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {DeviceEventVerifier} from "./DeviceEventVerifier.sol";
import {IDeviceRegistry} from "./interfaces/IDeviceRegistry.sol";
import {IMeteredBilling} from "./interfaces/IMeteredBilling.sol";
import {Funds} from "./money/Funds.sol";
import {PullPayments} from "./money/PullPayments.sol";

/// @title MeteredBilling: prepaid billing from a meter's device-signed cumulative register.
/// @notice A provider offers an agreement for one METER (or VEHICLE) device; the consumer accepts with a deposit.
/// `settle` bills the register delta since the last settled reading at the agreement's tariff. When the deposit
/// runs short the rest is recorded as arrears and the agreement is suspended until a top-up pays them.
///
/// Ending: after {requestClose} readings signed up to `closeAt` keep settling, in any order and however late, until
/// the agreement is closed; {close} is possible only from `closeAt + SETTLEMENT_GRACE`, so neither a consumer racing
/// to close nor a relayer withholding a reading during the notice can leave signed consumption unbilled. A reading
/// signed after `closeAt` is refused (AfterEnd). {closeWithReading} settles a fresh final reading and starts the
/// end now (`closeAt` = now, no notice); the refund still waits for the grace and {close}.
///
/// Gas layout: everything `settle` reads or writes for an agreement lives in ONE slot ({_meters}); the device and
/// tariff are encoded in the agreement id; provider earnings are derived (deposited − prepaid − withdrawn) rather
/// than credited per reading; tariffs are shared, so they are warm after the first reading of a batch.
contract MeteredBilling is IMeteredBilling, DeviceEventVerifier, PullPayments {
    bytes32 public constant READING_TYPEHASH =
        keccak256("Reading(uint256 agreementId,uint64 seq,uint64 timestamp,uint256 value)");

    /// @notice Tariffs have at most this many blocks (bounds the per-reading loop).
    uint256 public constant MAX_TARIFF_BLOCKS = 8;

    /// @dev The per-agreement state `settle` touches: exactly 256 bits. `closing` (a close was requested) tells
    /// `settle` whether `closeAt` can matter, so only agreements in their notice pay for reading it. `keyStamp` is
    /// the meter's key stamp ({DeviceEventVerifier-_checkSignerStamped}): with it a reading signed by the meter's own
    /// key needs no key-cache slot. `lastTimestamp` fits 32 bits because a settled timestamp is at most
    /// block.timestamp + MAX_CLOCK_SKEW: a hard limit of this contract, which must not be used once block.timestamp
    /// passes 2^32 − 1 − MAX_CLOCK_SKEW (2106-02-07; past it a timestamp would spill into `status`). A prepaid
    /// balance is below 2^80 (≈ 1.2 million tokens of 18 decimals).
    struct Meter {
        uint80 prepaid;
        uint64 lastValue;
        uint40 lastSeq;
        bool closing;
        uint32 lastTimestamp;
        AgreementStatus status;
        uint24 keyStamp;
    }

    /// @dev Everything else about an agreement; read by `settle` only for tiered tariffs and on arrears.
    struct Terms {
        address provider;
        uint32 noticePeriod;
        uint64 closeAt;
        address consumer;
        uint64 startValue;
        address token;
        uint128 deposited;
        uint128 withdrawn;
        uint256 arrears;
    }

    /// @dev The first block, inline, so a flat tariff costs one (warm) slot read.
    struct TariffHead {
        uint128 firstPrice;
        uint64 firstUnits;
        uint8 blockCount;
    }

    /// @notice Bytes per reading in {settle}'s packed batch.
    uint256 public constant PACKED_READING_SIZE = 114;

    /// @notice Bytes per record in a {ReadingsSettled} log: agreementId 32 | seq 5 | amount 12.
    uint256 public constant SETTLED_RECORD_SIZE = 49;

    /// @dev The `closing` byte of a {Meter} word (bits 184..191).
    uint256 private constant _CLOSING_MASK = uint256(0xff) << 184;

    /// @dev The largest key stamp a {Meter} word holds.
    uint256 private constant _STAMP_MAX = type(uint24).max;

    uint256 private constant _METER_KINDS =
        (1 << uint8(IDeviceRegistry.DeviceKind.Meter)) | (1 << uint8(IDeviceRegistry.DeviceKind.Vehicle));

    mapping(uint256 agreementId => Meter) private _meters;
    mapping(uint256 agreementId => Terms) private _terms;
    mapping(uint32 tariffId => TariffHead) private _tariffHeads;
    mapping(uint32 tariffId => TariffBlock[]) private _tariffBlocks;
    uint32 private _tariffCount;
    uint64 private _agreementCount;

    constructor(IDeviceRegistry registry_) DeviceEventVerifier(registry_) {}

    // ---------------------------------------------------------------- tariffs and agreements

    /// @inheritdoc IMeteredBilling
    function createTariff(TariffBlock[] calldata blocks) external returns (uint32 tariffId) {
        uint256 n = blocks.length;
        if (n == 0 || n > MAX_TARIFF_BLOCKS || blocks[n - 1].units != 0) revert InvalidTariff();
        for (uint256 i = 0; i + 1 < n; ++i) {
            if (blocks[i].units == 0) revert InvalidTariff();
        }
        tariffId = ++_tariffCount;
        _tariffHeads[tariffId] =
            TariffHead({firstPrice: blocks[0].price, firstUnits: blocks[0].units, blockCount: uint8(n)});
        for (uint256 i = 0; i < n; ++i) {
            _tariffBlocks[tariffId].push(blocks[i]);
        }
        emit TariffCreated(tariffId, msg.sender, blocks);
    }

    /// @inheritdoc IMeteredBilling
    function offer(
        address consumer,
        address device,
        uint32 tariffId,
        address token,
        uint64 startValue,
        uint32 noticePeriod
    ) external returns (uint256 agreementId) {
        if (consumer == address(0)) revert ZeroAddress();
        if (_tariffHeads[tariffId].blockCount == 0) revert UnknownTariff(tariffId);
        IDeviceRegistry.Device memory d = _REGISTRY.deviceOf(device);
        if (d.status != IDeviceRegistry.DeviceStatus.Active) revert UnknownDevice(device);
        if ((_METER_KINDS >> uint8(d.kind)) & 1 == 0) revert WrongDeviceKind(device);
        // The provider pays for the meter key's cache slot here, once, rather than its first reading.
        _warmKeyCache(d.key);

        agreementId = (uint256(uint160(device)) << 96) | (uint256(tariffId) << 64) | ++_agreementCount;
        _terms[agreementId] = Terms({
            provider: msg.sender,
            noticePeriod: noticePeriod,
            closeAt: 0,
            consumer: consumer,
            startValue: startValue,
            token: token,
            deposited: 0,
            withdrawn: 0,
            arrears: 0
        });
        _meters[agreementId].status = AgreementStatus.Offered;
        emit AgreementOffered(agreementId, msg.sender, consumer, device, token, tariffId, startValue, noticePeriod);
    }

    /// @inheritdoc IMeteredBilling
    function cancelOffer(uint256 agreementId) external {
        Meter storage m = _existing(agreementId);
        Terms storage t = _terms[agreementId];
        if (msg.sender != t.provider && msg.sender != t.consumer) revert NotProvider(agreementId, msg.sender);
        if (m.status != AgreementStatus.Offered) revert WrongStatus(agreementId, m.status);
        m.status = AgreementStatus.Cancelled;
        emit OfferCancelled(agreementId, msg.sender);
    }

    /// @inheritdoc IMeteredBilling
    function accept(uint256 agreementId, uint256 deposit, uint64 startValue) external payable nonReentrant {
        Meter storage m = _existing(agreementId);
        Terms storage t = _terms[agreementId];
        if (msg.sender != t.consumer) revert NotConsumer(agreementId, msg.sender);
        if (m.status != AgreementStatus.Offered) revert WrongStatus(agreementId, m.status);
        if (startValue != t.startValue) {
            revert TermsMismatch(agreementId, bytes32(uint256(t.startValue)), bytes32(uint256(startValue)));
        }
        if (deposit == 0) revert ZeroAmount();
        if (deposit > type(uint80).max) revert BalanceOverflow(deposit);

        _meters[agreementId] = Meter({
            prepaid: uint80(deposit),
            lastValue: t.startValue,
            lastSeq: 0,
            closing: false,
            lastTimestamp: uint32(block.timestamp),
            status: AgreementStatus.Active,
            keyStamp: 0
        });
        t.deposited = uint128(deposit);
        emit AgreementAccepted(agreementId, deposit);
        Funds.pullExact(t.token, deposit);
    }

    /// @inheritdoc IMeteredBilling
    function topUp(uint256 agreementId, uint256 amount) external payable nonReentrant {
        Meter storage m = _existing(agreementId);
        AgreementStatus status = m.status;
        if (status != AgreementStatus.Active && status != AgreementStatus.Suspended) {
            revert WrongStatus(agreementId, status);
        }
        if (amount == 0) revert ZeroAmount();
        Terms storage t = _terms[agreementId];
        uint256 arrears = t.arrears;
        uint256 arrearsPaid = amount < arrears ? amount : arrears;
        // arrearsPaid <= amount and <= arrears by construction.
        uint256 newPrepaid;
        unchecked {
            newPrepaid = uint256(m.prepaid) + (amount - arrearsPaid);
            t.arrears = arrears - arrearsPaid;
        }
        if (newPrepaid > type(uint80).max) revert BalanceOverflow(newPrepaid);
        uint256 newDeposited = uint256(t.deposited) + amount;
        if (newDeposited > type(uint128).max) revert BalanceOverflow(newDeposited);

        m.prepaid = uint80(newPrepaid);
        t.deposited = uint128(newDeposited);
        emit ToppedUp(agreementId, msg.sender, amount, arrearsPaid);
        if (status == AgreementStatus.Suspended && arrears == arrearsPaid) {
            m.status = AgreementStatus.Active;
            emit AgreementResumed(agreementId);
        }
        Funds.pullExact(t.token, amount);
    }

    // ---------------------------------------------------------------- settlement

    /// @inheritdoc IMeteredBilling
    function settle(bytes calldata readings) external returns (uint256 settled) {
        uint256 len = readings.length;
        if (len % PACKED_READING_SIZE != 0) revert MalformedBatch(len);
        // One registry read per batch: the key cache is trusted only at the registry's current epoch.
        uint256 keyEpoch = _batchKeyEpoch(len / PACKED_READING_SIZE);
        // The {ReadingsSettled} records, written in place: each record's second word spills 15 zero bytes into
        // the next record (or past the end, into unallocated memory), and the length is cut to what settled.
        uint256 cursor;
        {
            // len is a whole number of items (checked above): the division is exact.
            // slither-disable-next-line divide-before-multiply
            bytes memory buffer = new bytes((len / PACKED_READING_SIZE) * SETTLED_RECORD_SIZE);
            assembly ("memory-safe") {
                cursor := add(buffer, 0x20)
            }
        }
        // Tariffs never change once created: the head of the previous reading's tariff is reused for the next
        // reading of the same tariff (no slot hash, no warm read).
        uint256 lastTariff = type(uint256).max;
        uint256 head;
        for (uint256 p = 0; p < len; p += PACKED_READING_SIZE) {
            uint256 id;
            uint256 fields;
            uint256 at;
            // Item layout (114 bytes): agreementId 32 | seq 5 | timestamp 5 | value 8 | r 32 | vs 32. The narrow
            // fields cannot exceed what the contract stores (seq 40 bits, value 64 bits; a timestamp past 32 bits
            // fails the skew check until 2106, see {Meter}), so the range checks of the struct form are not needed.
            assembly ("memory-safe") {
                at := add(readings.offset, p)
                id := calldataload(at)
                fields := calldataload(add(at, 0x20))
            }
            uint256 seq = fields >> 216;
            if (uint32(id >> 64) != lastTariff) {
                lastTariff = uint32(id >> 64);
                head = _tariffHead(uint32(lastTariff));
            }
            (RejectReason reason, uint256 billed) =
                _settle(id, seq, uint40(fields >> 176), uint64(fields >> 112), at + 0x32, keyEpoch, head);
            if (reason == RejectReason.None) {
                // Record: agreementId 32 | seq 5 | amount 12 (seq < 2^40, billed <= prepaid < 2^80).
                assembly ("memory-safe") {
                    mstore(cursor, id)
                    mstore(add(cursor, 0x20), or(shl(216, seq), shl(120, billed)))
                }
                // Bounded by the batch length and the allocation.
                unchecked {
                    cursor += SETTLED_RECORD_SIZE;
                    ++settled;
                }
            } else {
                emit ReadingRejected(id, uint64(seq), reason);
            }
        }
        if (settled != 0) {
            // The buffer starts `settled` records before the cursor; shortening it in place keeps the records of
            // the settled readings only.
            bytes memory records;
            assembly ("memory-safe") {
                let size := mul(settled, SETTLED_RECORD_SIZE)
                records := sub(sub(cursor, size), 0x20)
                mstore(records, size)
            }
            emit ReadingsSettled(records);
        }
    }

    /// @inheritdoc IMeteredBilling
    function settleReading(SignedReading calldata reading) external {
        RejectReason reason = _settleChecked(reading);
        if (reason != RejectReason.None) revert EventRejected(reading.agreementId, reading.seq, reason);
    }

    /// @dev Emit the one-record {ReadingsSettled} of a reading settled alone.
    function _settledAlone(uint256 id, uint256 seq, uint256 billed) private {
        // seq < 2^40 and billed <= prepaid < 2^80 once settled.
        emit ReadingsSettled(abi.encodePacked(id, uint40(seq), uint96(billed)));
    }

    /// @dev The struct form carries wider fields (uint64 seq and timestamp, uint256 value) than the packed one:
    /// out-of-range items are refused with the reason the checks before the range check would give first.
    function _settleChecked(SignedReading calldata rd) private returns (RejectReason) {
        uint256 seq = rd.seq;
        uint256 timestamp = rd.timestamp;
        uint256 value = rd.value;
        if (seq > type(uint40).max || value > type(uint64).max || timestamp > type(uint40).max) {
            Meter storage m = _meters[rd.agreementId];
            AgreementStatus status = m.status;
            if (status == AgreementStatus.None) return RejectReason.UnknownTarget;
            if (seq <= m.lastSeq) return RejectReason.Replayed;
            if (status == AgreementStatus.Suspended) return RejectReason.Suspended;
            if (status != AgreementStatus.Active) return RejectReason.NotActive;
            // A timestamp beyond 2^40 s is also beyond now + MAX_CLOCK_SKEW.
            return seq > type(uint40).max || value > type(uint64).max
                ? RejectReason.ValueOutOfRange
                : RejectReason.TimestampInFuture;
        }
        uint256 sig;
        // r and vs are the struct's last two words, back to back in calldata as in a packed item.
        assembly ("memory-safe") {
            sig := add(rd, 0x80)
        }
        uint256 head = _tariffHead(uint32(rd.agreementId >> 64));
        (RejectReason reason, uint256 billed) =
            _settle(rd.agreementId, seq, timestamp, value, sig, _NO_KEY_CACHE, head);
        if (reason == RejectReason.None) _settledAlone(rd.agreementId, seq, billed);
        return reason;
    }

    /// @dev Checks in order of cost; a reading already consumed reports Replayed whatever the status is now, so
    /// several relayers can race safely. Returns None after billing, or the reason nothing changed. `seq` and
    /// `timestamp` are below 2^40 and `value` below 2^64 (callers check).
    /// The agreement's {Meter} slot is read and written as one word (one SLOAD, one SSTORE): Solidity would
    /// otherwise load and store each packed field separately. Layout, low bits first, as Solidity packs {Meter}:
    /// prepaid 0..79 | lastValue 80..143 | lastSeq 144..183 | closing 184..191 | lastTimestamp 192..223 |
    /// status 224..231 | keyStamp 232..255. The terms slot holding `closeAt` is read only when `closing` is set.
    /// `sig` is the calldata offset of the signature r ‖ vs (32 bytes each). `keyEpoch` is the registry's
    /// {IDeviceRegistry.keyEpoch} read in this transaction, or _NO_KEY_CACHE to ask the registry directly. The caller
    /// emits the {ReadingsSettled} record of `billed`. `head` is {_tariffHead} of the tariff the id names.
    function _settle(
        uint256 id,
        uint256 seq,
        uint256 timestamp,
        uint256 value,
        uint256 sig,
        uint256 keyEpoch,
        uint256 head
    ) private returns (RejectReason reason, uint256 billed) {
        Meter storage slot = _meters[id];
        uint256 word;
        assembly ("memory-safe") {
            word := sload(slot.slot)
        }
        reason = _checkReading(word, id, seq, timestamp, value);
        if (reason != RejectReason.None) return (reason, 0);
        uint256 stamp;
        (reason, stamp) = _checkReadingSigner(id, seq, timestamp, value, sig, keyEpoch, word >> 232);
        if (reason != RejectReason.None) return (reason, 0);
        billed = _bill(slot, word, id, seq, timestamp, value, head, stamp);
    }

    /// @dev The signature of the reading, against the device the agreement id names (see {_settle}), and the key
    /// stamp to keep (`stamp` is the word's).
    function _checkReadingSigner(
        uint256 id,
        uint256 seq,
        uint256 timestamp,
        uint256 value,
        uint256 sig,
        uint256 keyEpoch,
        uint256 stamp
    ) private returns (RejectReason, uint256) {
        bytes32 structHash = _readingHash(id, seq, timestamp, value);
        bytes32 r;
        bytes32 vs;
        assembly ("memory-safe") {
            r := calldataload(sig)
            vs := calldataload(add(sig, 0x20))
        }
        return _checkSignerStamped(
            structHash, r, vs, address(uint160(id >> 96)), _METER_KINDS, uint64(timestamp), keyEpoch, stamp, _STAMP_MAX
        );
    }

    /// @dev Everything but the signature, against the agreement's {Meter} word.
    function _checkReading(uint256 word, uint256 id, uint256 seq, uint256 timestamp, uint256 value)
        private
        view
        returns (RejectReason)
    {
        uint256 status = uint8(word >> 224);
        if (status == uint256(AgreementStatus.None)) return RejectReason.UnknownTarget;
        if (seq <= uint40(word >> 144)) return RejectReason.Replayed;
        if (status != uint256(AgreementStatus.Active)) {
            return status == uint256(AgreementStatus.Suspended) ? RejectReason.Suspended : RejectReason.NotActive;
        }
        if (value < uint64(word >> 80)) return RejectReason.CounterRollback;
        RejectReason reason = _checkTimestamp(uint64(timestamp), uint32(word >> 192));
        if (reason != RejectReason.None) return reason;
        if (word & _CLOSING_MASK != 0 && timestamp > _terms[id].closeAt) return RejectReason.AfterEnd;
        return RejectReason.None;
    }

    /// @dev Bill the delta and write the {Meter} word back in one SSTORE, with the key stamp `stamp`.
    function _bill(
        Meter storage slot,
        uint256 word,
        uint256 id,
        uint256 seq,
        uint256 timestamp,
        uint256 value,
        uint256 head,
        uint256 stamp
    ) private returns (uint256 billed) {
        uint256 cost = _readingCost(id, head, uint64(word >> 80), uint64(value));
        uint256 prepaid = uint80(word);
        billed = cost;
        uint256 status = uint8(word >> 224);
        if (cost > prepaid) {
            billed = prepaid;
            status = uint256(AgreementStatus.Suspended);
        }
        // billed <= prepaid; seq, value and timestamp are in range (see above; timestamp <= now + skew < 2^32),
        // stamp <= _STAMP_MAX.
        unchecked {
            word = (prepaid - billed) | (value << 80) | (seq << 144) | (word & _CLOSING_MASK) | (timestamp << 192)
                | (status << 224) | (stamp << 232);
        }
        assembly ("memory-safe") {
            sstore(slot.slot, word)
        }
        if (billed != cost) {
            uint256 arrears = _terms[id].arrears + (cost - billed);
            _terms[id].arrears = arrears;
            emit AgreementSuspended(id, arrears);
        }
    }

    /// @dev `keccak256(abi.encode(READING_TYPEHASH, id, seq, timestamp, value))` in the free memory without
    /// allocating it: abi.encode would allocate 192 bytes per reading that are never reused.
    function _readingHash(uint256 id, uint256 seq, uint256 time, uint256 value)
        private
        pure
        returns (bytes32 structHash)
    {
        bytes32 typehash = READING_TYPEHASH;
        assembly ("memory-safe") {
            let fmp := mload(0x40)
            mstore(fmp, typehash)
            mstore(add(fmp, 0x20), id)
            mstore(add(fmp, 0x40), seq)
            mstore(add(fmp, 0x60), time)
            mstore(add(fmp, 0x80), value)
            structHash := keccak256(fmp, 0xa0)
        }
    }

    /// @dev The packed head of a tariff in one SLOAD: firstPrice 0..127 | firstUnits 128..191 | blockCount 192..199.
    function _tariffHead(uint32 tariffId) private view returns (uint256 word) {
        TariffHead storage head = _tariffHeads[tariffId];
        assembly ("memory-safe") {
            word := sload(head.slot)
        }
    }

    /// @dev The cost of the register moving from `fromValue` to `toValue` at the tariff the id names, whose
    /// {_tariffHead} is `head`.
    function _readingCost(uint256 id, uint256 head, uint64 fromValue, uint64 toValue) private view returns (uint256) {
        if (uint8(head >> 192) == 1) {
            // < 2^64 units × < 2^128 price fits 256 bits.
            unchecked {
                return uint256(toValue - fromValue) * uint128(head);
            }
        }
        uint64 start = _terms[id].startValue;
        return _cost(uint32(id >> 64), fromValue - start, toValue - start);
    }

    /// @dev Price of the consumption interval [fromUsed, toUsed) over the tariff's blocks.
    function _cost(uint32 tariffId, uint64 fromUsed, uint64 toUsed) private view returns (uint256 total) {
        TariffBlock[] storage blocks = _tariffBlocks[tariffId];
        uint256 n = blocks.length;
        uint256 lower = 0;
        for (uint256 i = 0; i < n && lower < toUsed; ++i) {
            TariffBlock memory b = blocks[i];
            uint256 upper = b.units == 0 ? type(uint256).max : lower + b.units;
            uint256 lo = fromUsed > lower ? fromUsed : lower;
            uint256 hi = toUsed < upper ? toUsed : upper;
            if (hi > lo) total += (hi - lo) * b.price;
            lower = upper;
        }
    }

    // ---------------------------------------------------------------- payouts and closing

    /// @inheritdoc IMeteredBilling
    function withdrawEarnings(uint256 agreementId) external nonReentrant returns (uint256 amount) {
        Meter storage m = _existing(agreementId);
        Terms storage t = _terms[agreementId];
        if (msg.sender != t.provider) revert NotProvider(agreementId, msg.sender);
        amount = _earnings(m, t);
        if (amount == 0) revert NoEarnings(agreementId);
        // earnings <= deposited, which fits uint128.
        t.withdrawn += uint128(amount);
        emit EarningsWithdrawn(agreementId, msg.sender, amount);
        _guardPayout(t.token, amount); // the account's device guard, as for a credit
        Funds.push(t.token, msg.sender, amount);
    }

    /// @inheritdoc IMeteredBilling
    function requestClose(uint256 agreementId) external {
        Meter storage m = _existing(agreementId);
        Terms storage t = _terms[agreementId];
        if (msg.sender != t.consumer) revert NotConsumer(agreementId, msg.sender);
        if (m.status != AgreementStatus.Active && m.status != AgreementStatus.Suspended) {
            revert WrongStatus(agreementId, m.status);
        }
        if (t.closeAt != 0) return;
        uint64 closeAt = uint64(block.timestamp) + t.noticePeriod;
        t.closeAt = closeAt;
        m.closing = true;
        emit CloseRequested(agreementId, closeAt);
    }

    /// @inheritdoc IMeteredBilling
    function close(uint256 agreementId) external nonReentrant returns (uint256 refund) {
        Meter storage m = _existing(agreementId);
        Terms storage t = _terms[agreementId];
        if (msg.sender != t.consumer) revert NotConsumer(agreementId, msg.sender);
        if (m.status != AgreementStatus.Active && m.status != AgreementStatus.Suspended) {
            revert WrongStatus(agreementId, m.status);
        }
        if (t.closeAt == 0) revert CloseNotRequested(agreementId);
        // Strictly after the grace: at closeAt + SETTLEMENT_GRACE a reading signed by closeAt still settles, so a
        // close in the same second would let the order inside the block decide the bill.
        uint256 notBefore = uint256(t.closeAt) + SETTLEMENT_GRACE + 1;
        if (block.timestamp < notBefore) revert TooEarly(agreementId, notBefore, block.timestamp);
        return _close(agreementId, m, t);
    }

    /// @inheritdoc IMeteredBilling
    /// @dev The final reading makes the notice unnecessary (the consumer shows the register now), but not the
    /// grace: a newer reading signed before this call may be on its way, so it must keep settling until {close}.
    /// Paying the refund here would let the consumer pick an older fresh reading and leave it unbilled.
    function closeWithReading(SignedReading calldata reading) external nonReentrant returns (uint64 closeAt) {
        uint256 agreementId = reading.agreementId;
        _existing(agreementId);
        Terms storage t = _terms[agreementId];
        if (msg.sender != t.consumer) revert NotConsumer(agreementId, msg.sender);
        if (uint256(reading.timestamp) + MAX_CLOCK_SKEW < block.timestamp) {
            revert EventRejected(agreementId, reading.seq, RejectReason.TimestampTooOld);
        }
        RejectReason reason = _settleChecked(reading);
        if (reason != RejectReason.None) revert EventRejected(agreementId, reading.seq, reason);
        closeAt = t.closeAt;
        // The reading settled, so closeAt is 0 or at least its timestamp: bring the end forward, never later.
        if (closeAt == 0 || closeAt > block.timestamp) {
            closeAt = uint64(block.timestamp);
            t.closeAt = closeAt;
            _meters[agreementId].closing = true;
            emit CloseRequested(agreementId, closeAt);
        }
    }

    function _close(uint256 agreementId, Meter storage m, Terms storage t) private returns (uint256 refund) {
        refund = m.prepaid;
        m.prepaid = 0;
        m.status = AgreementStatus.Closed;
        // The refund leaves the deposit, so earnings (deposited − prepaid − withdrawn) stay what was billed.
        t.deposited -= uint128(refund);
        emit AgreementClosed(agreementId, refund);
        _pay(t.token, t.consumer, refund);
    }

    // ---------------------------------------------------------------- views

    /// @inheritdoc IMeteredBilling
    function agreementOf(uint256 agreementId) external view returns (Agreement memory a) {
        Meter memory m = _meters[agreementId];
        Terms memory t = _terms[agreementId];
        // Offered agreements always have a provider: an unknown id reports no device and no tariff.
        bool exists = t.provider != address(0);
        a = Agreement({
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

    /// @inheritdoc IMeteredBilling
    function tariffOf(uint32 tariffId) external view returns (TariffBlock[] memory) {
        return _tariffBlocks[tariffId];
    }

    /// @inheritdoc IMeteredBilling
    function earningsOf(uint256 agreementId) external view returns (uint256) {
        return _earnings(_meters[agreementId], _terms[agreementId]);
    }

    /// @inheritdoc IMeteredBilling
    function costOf(uint32 tariffId, uint64 fromUsed, uint64 toUsed) external view returns (uint256) {
        if (_tariffHeads[tariffId].blockCount == 0) revert UnknownTariff(tariffId);
        if (toUsed <= fromUsed) return 0;
        return _cost(tariffId, fromUsed, toUsed);
    }

    /// @inheritdoc IMeteredBilling
    function hashReading(uint256 agreementId, uint64 seq, uint64 timestamp, uint256 value)
        external
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(READING_TYPEHASH, agreementId, seq, timestamp, value)));
    }

    // ---------------------------------------------------------------- internals

    function _existing(uint256 agreementId) private view returns (Meter storage m) {
        m = _meters[agreementId];
        if (m.status == AgreementStatus.None) revert UnknownAgreement(agreementId);
    }

    function _earnings(Meter storage m, Terms storage t) private view returns (uint256) {
        return uint256(t.deposited) - m.prepaid - t.withdrawn;
    }
}
