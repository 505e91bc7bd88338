// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title Shared vocabulary of the products that settle device-signed events.
/// @notice Batch calls never revert as a whole because of one bad item: they skip it and emit a per-item
/// rejection event carrying a {RejectReason}. Single-item calls revert with {EventRejected} and the same code.
/// The oracle decodes these codes; docs/contracts.md lists them. Codes are append-only.
interface IDeviceEvents {
    /// @notice Why a device-signed event was not settled.
    enum RejectReason {
        None, //                0 never emitted
        SignatureInvalid, //    1 does not recover to an address (garbage r/s, bad v)
        SignatureMalleable, //  2 s in the upper half of the curve order
        UnknownKey, //          3 the signer was never registered
        KeyRotated, //          4 the signer was a key of the device but has been rotated out
        DeviceRevoked, //       5 the device was revoked by its owner
        WrongDevice, //         6 the signer belongs to another device than the agreement/escrow names
        WrongDeviceKind, //     7 the device kind cannot be used by this product
        UnknownTarget, //       8 no such agreement / escrow
        NotActive, //           9 agreement offered/closed/cancelled, escrow refunded/cancelled
        Replayed, //           10 already consumed: seq not above the last settled one, or escrow already released
        TimestampInFuture, //  11 timestamp > block.timestamp + MAX_CLOCK_SKEW
        TimestampTooOld, //    12 timestamp before the last settled event (or before the escrow was created)
        CounterRollback, //    13 cumulative register below the last settled value
        ValueOutOfRange, //    14 register value or seq does not fit the stored width
        WrongLocation, //      15 delivery location differs from the escrow destination
        DeadlinePassed, //     16 delivery timestamp after the escrow deadline
        Suspended, //          17 agreement suspended for arrears; retry after a top-up
        SequenceGap, //        18 gapless kinds: seq is not the last settled seq + 1 (an earlier event is missing)
        AfterEnd //            19 timestamp after the agreement's or policy's end (closeAt): nothing to settle
    }

    /// @notice A single-item call refused a device-signed event. `targetId` is the agreement or escrow id.
    error EventRejected(uint256 targetId, uint64 seq, RejectReason reason);

    /// @notice The {DeviceRegistry} the contract checks device keys against.
    function registry() external view returns (address);

    /// @notice Seconds an event timestamp may lie ahead of block.timestamp (device clocks drift).
    function MAX_CLOCK_SKEW() external view returns (uint64);

    /// @notice Seconds after an end (a close time, an escrow deadline) during which events signed before the end
    /// still settle; closes and refunds pay out only after it. Covers relay latency and {MAX_CLOCK_SKEW}, so a
    /// relayer who withholds or a party who races to close can delay a payment but not cancel it.
    function SETTLEMENT_GRACE() external view returns (uint64);
}
