// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";

import {IDeviceRegistry} from "./interfaces/IDeviceRegistry.sol";
import {IMotorInsurance} from "./interfaces/IMotorInsurance.sol";
import {IOptimisticMotor} from "./interfaces/IOptimisticMotor.sol";
import {MotorInsurance} from "./MotorInsurance.sol";
import {OptimisticBatches} from "./OptimisticBatches.sol";

/// @title OptimisticMotor: pay-per-km motor insurance from bonded batch commitments, fraud proofs and claims.
/// @notice The policy life cycle, pricing, money and views are {MotorInsurance}'s; only the way reports arrive
/// differs (see {IOptimisticMotor}). Why the premium cannot depend on what the relayer commits: it is floor(F) of
/// the newest claimed report's totals (F grows with the cumulative registers, the charges telescope), and a claim
/// only moves forward, so the premium for reaching given registers is the same whatever subset, order or batching
/// was committed — and every claimable report carries a vehicle signature that stood unchallenged for a window.
///
/// Time: a leaf is judged as of its batch's commit: key retirement and the clock-skew rule use `committedAt`, and the
/// seq/register/timestamp rules use the policy's last claimed report only when that claim came before the commit,
/// so a report that was valid when posted can never be slashed by a claim made afterwards.
contract OptimisticMotor is IOptimisticMotor, MotorInsurance, OptimisticBatches {
    /// @inheritdoc IOptimisticMotor
    uint256 public constant POLICY_ID_FLAG = 1 << 63;

    /// @inheritdoc IOptimisticMotor
    uint256 public constant MAX_BATCH_REPORTS = 4_096;

    /// @inheritdoc IOptimisticMotor
    uint256 public constant BATCH_ITEM_SIZE = 90;

    /// @dev Bytes of a report as a claim or a challenge carries it ({MotorInsurance-settle}'s item).
    uint256 private constant _REPORT_SIZE = 174;

    uint256 private constant _VEHICLE = 1 << uint8(IDeviceRegistry.DeviceKind.Vehicle);

    /// @dev Block time of the policy's last claim (0: none yet, the acceptance's registers stand).
    mapping(uint256 policyId => uint256) private _claimedAt;

    /// @dev `challengeWindow_` within [{MIN_CHALLENGE_WINDOW}, {MAX_CHALLENGE_WINDOW}], `bond_` > 0 (wei).
    constructor(IDeviceRegistry registry_, uint64 challengeWindow_, uint256 bond_)
        MotorInsurance(registry_)
        OptimisticBatches(challengeWindow_, bond_)
    {}

    /// @notice Always reverts with {SettledByClaims}: a report settled outside the batches could make an honest
    /// batch look replayed, and a policy that chose this mode takes its reports through claims only.
    function settle(bytes calldata) external pure override(IMotorInsurance, MotorInsurance) returns (uint256) {
        revert SettledByClaims();
    }

    /// @notice Seconds after closeAt before {close}: the grace, the challenge window of a batch committed at its end,
    /// and one more grace to claim it.
    function closeDelay(uint256) public view override(IMotorInsurance, MotorInsurance) returns (uint256) {
        return 2 * uint256(SETTLEMENT_GRACE) + CHALLENGE_WINDOW;
    }

    // ---------------------------------------------------------------- the reports of a batch

    /// @dev {IOptimisticMotor}'s batch layout: the reports, checked to fit {MAX_BATCH_REPORTS}.
    function _itemsIn(bytes calldata data) internal pure override returns (uint256 count) {
        bool wellShaped;
        (wellShaped, count) = _tableItems(data, BATCH_ITEM_SIZE, MAX_BATCH_REPORTS);
        if (!wellShaped) revert MalformedBatch(data.length);
    }

    /// @dev The leaves of a batch's reports; not well formed when an item points past the policy table. Item:
    /// index 2 | seq 5 | timestamp − base 3 | odometer 8 | harsh 4 | speeding 4 | r 32 | vs 32.
    function _leaves(bytes calldata data) internal view override returns (bool wellFormed, bytes32[] memory leaves) {
        uint256 policies = uint16(bytes2(data[0:2]));
        uint256 base = uint40(bytes5(data[2:7]));
        uint256 at = _BATCH_HEADER + 32 * policies;
        uint256 n = (data.length - at) / BATCH_ITEM_SIZE;
        bytes32 separator = _domainSeparatorV4();
        leaves = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            uint256 head = uint256(bytes32(data[at:at + 32]));
            uint256 index = head >> 240;
            if (index >= policies) return (false, leaves);
            uint256 id = uint256(bytes32(data[_BATCH_HEADER + 32 * index:_BATCH_HEADER + 32 + 32 * index]));
            // The fields word of {MotorInsurance-_settle}: seq 5 bytes at bit 200 of the head, the offset 3 at 176,
            // odometer 8 at 112, harsh 4 at 80, speeding 4 at 48. base + offset < 2^41 fits the word's 64 bits.
            uint256 fields = (uint256(uint40(head >> 200)) << 192) | ((base + uint24(head >> 176)) << 128)
                | (uint256(uint64(head >> 112)) << 64) | (uint256(uint32(head >> 80)) << 32) | uint32(head >> 48);
            leaves[i] = _leafOf(
                MessageHashUtils.toTypedDataHash(separator, _structHash(id, fields)),
                bytes32(data[at + 26:at + 58]),
                bytes32(data[at + 58:at + 90])
            );
            at += BATCH_ITEM_SIZE;
        }
        return (true, leaves);
    }

    /// @dev The leaf of a packed report: over what the vehicle signed and its signature (the terms are not in it).
    function _leafOfItem(bytes calldata report) internal view override returns (bytes32) {
        (uint256 id, uint256 fields, bytes32 r, bytes32 vs) = _report(report);
        return _leafOf(_hashTypedDataV4(_structHash(id, fields)), r, vs);
    }

    /// @dev The rules a challenge can prove broken, as of the batch's commit (see the contract notice).
    function _fault(bytes calldata report, uint256 committedAt) internal view override returns (RejectReason) {
        (uint256 id, uint256 fields, bytes32 r, bytes32 vs) = _report(report);
        uint256 word;
        {
            Record storage p = _policies[id];
            assembly ("memory-safe") {
                word := sload(p.slot)
            }
        }
        if (uint8(word >> 232) == uint256(PolicyStatus.None)) return RejectReason.UnknownTarget;
        uint256 timestamp = uint64(fields >> 128);
        if (timestamp > committedAt + MAX_CLOCK_SKEW) return RejectReason.TimestampInFuture;
        if (_claimedAt[id] < committedAt) {
            if (fields >> 192 <= uint64(word >> 64)) return RejectReason.Replayed;
            if (
                uint64(fields >> 64) < uint64(word) || uint32(fields >> 32) < uint32(word >> 168)
                    || uint32(fields) < uint32(word >> 200)
            ) {
                return RejectReason.CounterRollback;
            }
            if (timestamp < uint40(word >> 128)) return RejectReason.TimestampTooOld;
        }
        return
            _signerFaultAsOf(
                _structHash(id, fields), r, vs, address(uint160(id >> 96)), _VEHICLE, timestamp, committedAt
            );
    }

    /// @dev Charge the report from the policy's last claimed one with {MotorInsurance-settle}'s checks but the
    /// signature's (it stood through the window); reverts with EventRejected when it would not move forward.
    function _claim(bytes calldata report, uint256 batchId) internal override {
        (uint256 id, uint256 fields,,) = _report(report);
        Record storage p = _policies[id];
        uint256 word;
        assembly ("memory-safe") {
            word := sload(p.slot)
        }
        RejectReason reason = _checkWord(word, fields);
        uint256 at;
        assembly ("memory-safe") {
            at := report.offset
        }
        (uint256 terms, uint256 rate, uint256 money) = _termsOf(p, at);
        uint256 closeAt = uint64(terms >> 176);
        if (reason == RejectReason.None && closeAt != 0 && uint64(fields >> 128) > closeAt) {
            reason = RejectReason.AfterEnd;
        }
        if (reason != RejectReason.None) revert EventRejected(id, uint64(fields >> 192), reason);
        _claimedAt[id] = block.timestamp;
        emit ReportClaimed(id, batchId, uint64(fields >> 192));
        _charge(p, word, terms, rate, uint88(money), id, fields);
    }

    /// @dev The policy id, the fields word ({MotorInsurance-_settle}'s layout) and the signature of a packed report.
    function _report(bytes calldata report) private pure returns (uint256 id, uint256 fields, bytes32 r, bytes32 vs) {
        if (report.length != _REPORT_SIZE) revert MalformedBatch(report.length);
        assembly ("memory-safe") {
            let at := report.offset
            id := calldataload(at)
            fields := calldataload(add(at, 0x20))
            r := calldataload(add(at, 0x40))
            vs := calldataload(add(at, 0x60))
        }
    }

    function _policyIdFlag() internal pure override returns (uint256) {
        return POLICY_ID_FLAG;
    }
}
