// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";

import {IDeviceEvents} from "./interfaces/IDeviceEvents.sol";
import {IDeviceRegistry} from "./interfaces/IDeviceRegistry.sol";

/// @title Shared verification of device-signed events for the settlement products.
/// @notice Every product is its own EIP-712 verifying contract under the domain ("iotsettle", "1", chainId,
/// address(this)), so a signature is bound to one chain and one contract. A signature must recover (low s,
/// v ∈ {27, 28}) to the device's current key in the {DeviceRegistry}; the product then checks sequence and time.
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

    /// @dev Recover the signer of `structHash` (ERC-2098 compact signature) and check it is the current key of
    /// `device`, and that the device's kind is in `kindMask` (bit i set = DeviceKind i accepted).
    function _checkSigner(bytes32 structHash, bytes32 r, bytes32 vs, address device, uint256 kindMask)
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
        (address keyDevice, uint256 kind, uint256 status) = _keyInfo(signer);
        if (status == uint256(IDeviceRegistry.KeyStatus.None)) return RejectReason.UnknownKey;
        if (keyDevice != device) return RejectReason.WrongDevice;
        if (status == uint256(IDeviceRegistry.KeyStatus.Rotated)) return RejectReason.KeyRotated;
        if (status == uint256(IDeviceRegistry.KeyStatus.Revoked)) return RejectReason.DeviceRevoked;
        if ((kindMask >> kind) & 1 == 0) return RejectReason.WrongDeviceKind;
        return RejectReason.None;
    }

    /// @dev `IDeviceRegistry.keyInfo(key)` through scratch memory: the high-level call costs ~340 gas more per
    /// event in ABI encoding, memory and enum checks, and this runs once per settled event. The registry is the
    /// trusted, immutable contract given at construction; a failing or short answer reverts the whole call.
    function _keyInfo(address key) private view returns (address device, uint256 kind, uint256 status) {
        address reg = address(_REGISTRY);
        bytes4 selector = IDeviceRegistry.keyInfo.selector;
        uint256 word0;
        assembly ("memory-safe") {
            let fmp := mload(0x40)
            mstore(0x00, selector)
            mstore(0x04, key)
            let ok := staticcall(gas(), reg, 0x00, 0x24, 0x00, 0x60)
            if iszero(and(ok, iszero(lt(returndatasize(), 0x60)))) { revert(0, 0) }
            word0 := mload(0x00)
            kind := mload(0x20)
            status := mload(0x40)
            mstore(0x40, fmp)
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
