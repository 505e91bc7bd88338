// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";

import {IDeviceEvents} from "./interfaces/IDeviceEvents.sol";
import {IDeviceRegistry} from "./interfaces/IDeviceRegistry.sol";

/// @title Shared verification of device-signed events for the settlement products.
/// @notice Every product is its own EIP-712 verifying contract under the domain ("iotsettle", "1", chainId,
/// address(this)), so a signature is bound to one chain and one contract. A signature must recover (low s,
/// v ∈ {27, 28}) to the device's current key in the {DeviceRegistry}, or to a key retired (rotated out or revoked)
/// after the event's timestamp, relayed within {SETTLEMENT_GRACE} of the retirement; the product then checks
/// sequence and time.
///
/// Timestamp rule: an event may lie at most {MAX_CLOCK_SKEW} seconds in the future of the block, and may not be
/// older than the last event the product settled for the same agreement (or the escrow's creation).
/// The checks return a {RejectReason} instead of reverting so batches can skip bad items.
abstract contract DeviceEventVerifier is IDeviceEvents, EIP712 {
    /// @inheritdoc IDeviceEvents
    uint64 public constant MAX_CLOCK_SKEW = 300;

    /// @inheritdoc IDeviceEvents
    uint64 public constant SETTLEMENT_GRACE = 1 hours;

    IDeviceRegistry internal immutable _REGISTRY;

    error ZeroRegistry();

    constructor(IDeviceRegistry registry_) EIP712("iotsettle", "1") {
        if (address(registry_) == address(0)) revert ZeroRegistry();
        _REGISTRY = registry_;
    }

    /// @inheritdoc IDeviceEvents
    function registry() external view returns (address) {
        return address(_REGISTRY);
    }

    /// @dev Recover the signer of `structHash` (ERC-2098 compact signature) and check it is a key of `device`, and
    /// that the device's kind is in `kindMask` (bit i set = DeviceKind i accepted). A retired key (Rotated or
    /// Revoked) still counts for an event whose signed `timestamp` is at or before its `retiredAt`, relayed by
    /// `retiredAt + SETTLEMENT_GRACE`: otherwise an owner could erase what the device already signed by revoking
    /// or rotating before the relay. The cost of this: whoever holds a stolen key keeps, for one grace after the
    /// owner revokes, the power to settle events dated at or before the revocation, new backdated ones included
    /// (which they had anyway until then); anything dated after `retiredAt` or relayed later is refused
    /// (KeyRotated / DeviceRevoked).
    function _checkSigner(bytes32 structHash, bytes32 r, bytes32 vs, address device, uint256 kindMask, uint64 timestamp)
        internal
        view
        returns (RejectReason)
    {
        // The third value (the offending s or length) is only needed for revert messages; reasons carry no data.
        // slither-disable-next-line unused-return
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(_hashTypedDataV4(structHash), r, vs);
        if (err != ECDSA.RecoverError.NoError) {
            return err == ECDSA.RecoverError.InvalidSignatureS
                ? RejectReason.SignatureMalleable
                : RejectReason.SignatureInvalid;
        }
        (address keyDevice, uint256 kind, uint256 status, uint256 retiredAt) = _keyInfo(signer);
        if (status == uint256(IDeviceRegistry.KeyStatus.None)) return RejectReason.UnknownKey;
        if (keyDevice != device) return RejectReason.WrongDevice;
        if (status != uint256(IDeviceRegistry.KeyStatus.Current)) {
            // retiredAt is a uint64 block time: adding one hour cannot overflow a uint256.
            if (timestamp > retiredAt || block.timestamp > retiredAt + SETTLEMENT_GRACE) {
                return status == uint256(IDeviceRegistry.KeyStatus.Rotated)
                    ? RejectReason.KeyRotated
                    : RejectReason.DeviceRevoked;
            }
        }
        if ((kindMask >> kind) & 1 == 0) return RejectReason.WrongDeviceKind;
        return RejectReason.None;
    }

    /// @dev `IDeviceRegistry.keyInfo(key)` in assembly (arguments in scratch space, the 4-word answer read from
    /// free memory): the high-level call costs ~340 gas more per event in ABI encoding, memory and enum checks, and
    /// this runs once per settled event. The registry is the trusted, immutable contract given at construction; a
    /// failing or short answer reverts the whole call.
    function _keyInfo(address key)
        private
        view
        returns (address device, uint256 kind, uint256 status, uint256 retiredAt)
    {
        address reg = address(_REGISTRY);
        bytes4 selector = IDeviceRegistry.keyInfo.selector;
        uint256 word0;
        assembly ("memory-safe") {
            let fmp := mload(0x40)
            mstore(0x00, selector)
            mstore(0x04, key)
            // The 0x80-byte answer goes to free memory (not allocated: it is read at once) so the zero slot at
            // 0x60 is never touched.
            let ok := staticcall(gas(), reg, 0x00, 0x24, fmp, 0x80)
            if iszero(and(ok, iszero(lt(returndatasize(), 0x80)))) { revert(0, 0) }
            word0 := mload(fmp)
            kind := mload(add(fmp, 0x20))
            status := mload(add(fmp, 0x40))
            retiredAt := mload(add(fmp, 0x60))
        }
        device = address(uint160(word0));
    }

    /// @dev The timestamp rule: not beyond block.timestamp + MAX_CLOCK_SKEW, not before `notBefore`.
    function _checkTimestamp(uint64 timestamp, uint256 notBefore) internal view returns (RejectReason) {
        if (timestamp > block.timestamp + MAX_CLOCK_SKEW) return RejectReason.TimestampInFuture;
        if (timestamp < notBefore) return RejectReason.TimestampTooOld;
        return RejectReason.None;
    }
}
