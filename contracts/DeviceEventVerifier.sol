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

    /// @dev Base of the key cache of {_checkSignerStamped}: a namespaced location, outside the storage layout of
    /// every derived contract.
    bytes32 private constant _KEY_CACHE_SLOT = keccak256("iotsettle.DeviceEventVerifier.keyCache");

    /// @dev Not an epoch (the registry's is a uint64): {_checkSignerStamped} asks the registry.
    uint256 internal constant _NO_KEY_CACHE = type(uint256).max;

    /// @dev Batches of at least this many events check keys through the cache (one registry read for the epoch, then
    /// a local slot per key); smaller ones and single-event functions call the registry per event.
    uint256 private constant _CACHED_BATCH = 3;

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
        (address signer, RejectReason reason) = _recover(structHash, r, vs);
        if (reason != RejectReason.None) return reason;
        (address keyDevice, uint256 kind, uint256 status, uint256 retiredAt) = _keyInfo(signer);
        return _keyVerdict(keyDevice, kind, status, retiredAt, device, kindMask, timestamp);
    }

    /// @dev {_checkSigner} with a local cache of the registry's answer for Current keys and a key stamp, for
    /// products whose devices sign many events.
    ///
    /// The cache: `keyEpoch` must be {_batchKeyEpoch} of the batch, read in this transaction: the registry's
    /// `keyEpoch()`, or _NO_KEY_CACHE for a batch too small to gain from the cache (the registry is then asked, as by
    /// {_checkSigner}). An entry is `device (bits 0..159) | kind (160..167) | epoch (168..231)` and is trusted only
    /// while its epoch equals the registry's: every rotation and revocation bumps it, so a retired key falls back to
    /// the registry in the very next transaction and gets the same verdict as {_checkSigner}. Entries are written
    /// only here, from the registry's own answer for a Current key, at a namespaced slot
    /// (keccak256(abi.encode(key, _KEY_CACHE_SLOT))) no other storage of a derived contract can reach. Retired keys
    /// are never cached. The first event of a key pays for the new slot (≈ 20,000 gas once), an event after any
    /// retirement in the registry pays the registry call and a rewrite (≈ 2,900); every other event saves the call.
    ///
    /// The stamp, kept in the product's own per-agreement word, which the product reads for every settled event
    /// anyway: `stamp` is 0 or `e + 1`, where `e` is a registry epoch at which the address `device` (a device's first
    /// key: the address the agreement or policy id names) was a Current key of `device`, of a kind in `kindMask`.
    /// Keys change only by retirement and every retirement bumps the epoch, so while the registry is still at epoch
    /// `e` that remains true, and an event that recovers to `device` itself is accepted without the cache entry (one
    /// cold slot less: ≈ 2,150 gas an event). Any other signer, a stamp of an earlier epoch, or a batch without a
    /// `keyEpoch` gets the cache's verdict, and the stamp to keep is renewed when that verdict is None for
    /// `device`'s own Current key. Stamps are compared, never truncated: a product keeps them in `stampMax` bits'
    /// room (a stamp above `stampMax` is not issued, so the stamps stop once the registry retires that many keys and
    /// every event asks the cache; `stamp` 0 with `stampMax` 0 is the cache alone). `kindMask` must be the same for
    /// every call that shares a stamp (a product's constant). tests/contracts/KeyCache.t.sol checks the verdict
    /// against {_checkSigner} in every registry state, with and without stamps.
    function _checkSignerStamped(
        bytes32 structHash,
        bytes32 r,
        bytes32 vs,
        address device,
        uint256 kindMask,
        uint64 timestamp,
        uint256 keyEpoch,
        uint256 stamp,
        uint256 stampMax
    ) internal returns (RejectReason, uint256) {
        (address signer, RejectReason reason) = _recover(structHash, r, vs);
        if (reason != RejectReason.None) return (reason, stamp);
        // stamp <= stampMax < 2^64, so stamp - 1 never equals _NO_KEY_CACHE.
        unchecked {
            if (signer == device && stamp != 0 && stamp - 1 == keyEpoch) return (RejectReason.None, stamp);
        }
        (address keyDevice, uint256 kind, uint256 status, uint256 retiredAt) = keyEpoch == _NO_KEY_CACHE
            ? _keyInfo(signer)
            : _cachedKeyInfo(signer, keyEpoch);
        reason = _keyVerdict(keyDevice, kind, status, retiredAt, device, kindMask, timestamp);
        if (
            reason == RejectReason.None && signer == device && status == uint256(IDeviceRegistry.KeyStatus.Current)
                && keyEpoch < stampMax
        ) {
            // keyEpoch < stampMax: never _NO_KEY_CACHE, and the new stamp fits.
            stamp = keyEpoch + 1;
        }
        return (reason, stamp);
    }

    /// @dev The `keyEpoch` of {_checkSignerStamped} for a batch of `items` events: one registry read per batch, which
    /// costs more than the registry calls it saves below _CACHED_BATCH events.
    function _batchKeyEpoch(uint256 items) internal view returns (uint256) {
        return items < _CACHED_BATCH ? _NO_KEY_CACHE : _registryKeyEpoch();
    }

    /// @dev The signer of the EIP-712 digest of `structHash` under OpenZeppelin's rules (low s, v ∈ {27, 28}), or
    /// the reason it has none.
    function _recover(bytes32 structHash, bytes32 r, bytes32 vs) private view returns (address, RejectReason) {
        // The third value (the offending s or length) is only needed for revert messages; reasons carry no data.
        // slither-disable-next-line unused-return
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(_hashTypedDataV4(structHash), r, vs);
        if (err == ECDSA.RecoverError.NoError) return (signer, RejectReason.None);
        return (
            address(0),
            err == ECDSA.RecoverError.InvalidSignatureS ? RejectReason.SignatureMalleable : RejectReason.SignatureInvalid
        );
    }

    /// @dev The verdict on a signer whose key record is (`keyDevice`, `kind`, `status`, `retiredAt`), for an event of
    /// `device` dated `timestamp` (rules at {_checkSigner}).
    function _keyVerdict(
        address keyDevice,
        uint256 kind,
        uint256 status,
        uint256 retiredAt,
        address device,
        uint256 kindMask,
        uint64 timestamp
    ) private view returns (RejectReason) {
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

    /// @dev Fill the cache entry of `key` now (the registry's answer at its current epoch, as an event would), so
    /// that the first event of a device does not pay for the new slot: for products that learn the key when an
    /// agreement is made.
    function _warmKeyCache(address key) internal {
        // The answer is only wanted for its side effect on the cache.
        // slither-disable-next-line unused-return
        _cachedKeyInfo(key, _registryKeyEpoch());
    }

    /// @dev The registry's retirement counter ({IDeviceRegistry.keyEpoch}), for {_checkSignerStamped}.
    function _registryKeyEpoch() internal view returns (uint256) {
        return _REGISTRY.keyEpoch();
    }

    /// @dev `keyInfo(key)` from the cache when its entry carries `keyEpoch`, else from the registry (refreshing
    /// the entry when the key is Current).
    function _cachedKeyInfo(address key, uint256 keyEpoch)
        private
        returns (address device, uint256 kind, uint256 status, uint256 retiredAt)
    {
        bytes32 base = _KEY_CACHE_SLOT;
        bytes32 slot;
        uint256 entry;
        assembly ("memory-safe") {
            mstore(0x00, key)
            mstore(0x20, base)
            slot := keccak256(0x00, 0x40)
            entry := sload(slot)
        }
        // A Current key's device is never zero, so a zero entry (never written) cannot pass for epoch 0.
        if (entry != 0 && entry >> 168 == keyEpoch) {
            return (address(uint160(entry)), uint8(entry >> 160), uint256(IDeviceRegistry.KeyStatus.Current), 0);
        }
        (device, kind, status, retiredAt) = _keyInfo(key);
        if (status == uint256(IDeviceRegistry.KeyStatus.Current)) {
            // keyEpoch < 2^64 and kind < 2^8: the entry fits 232 bits.
            uint256 fresh = uint256(uint160(device)) | (kind << 160) | (keyEpoch << 168);
            assembly ("memory-safe") {
                sstore(slot, fresh)
            }
        }
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
