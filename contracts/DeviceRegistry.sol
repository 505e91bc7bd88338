// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";

import {IDeviceRegistry} from "./interfaces/IDeviceRegistry.sol";

/// @title DeviceRegistry: on-chain identity of signing devices.
/// @notice A device is registered by its owner with a proof of possession: the device key signs an EIP-712
/// `Registration` naming the owner. The device id stays the first key's address for life; the owner can rotate
/// the signing key (signed by the new key), update the metadata hash, and revoke the device for good.
/// Products read {keyInfo} (one storage slot) to learn which device a signer speaks for.
contract DeviceRegistry is IDeviceRegistry, EIP712 {
    bytes32 public constant REGISTRATION_TYPEHASH =
        keccak256("Registration(address device,address owner,uint8 kind,bytes32 metadataHash,uint64 deadline)");
    bytes32 public constant KEY_ROTATION_TYPEHASH =
        keccak256("KeyRotation(address device,address newKey,uint64 deadline)");

    /// @dev What products read per event: packed into one slot (160 + 8 + 8 + 64 bits).
    struct KeyRecord {
        address device;
        DeviceKind kind;
        KeyStatus status;
        uint64 retiredAt;
    }

    mapping(address device => Device) private _devices;
    mapping(address key => KeyRecord) private _keys;
    /// @dev Bumped by every retirement (rotation or revocation): see {keyEpoch}.
    uint64 private _keyEpoch;

    constructor() EIP712("iotsettle", "1") {}

    /// @inheritdoc IDeviceRegistry
    function register(address device, DeviceKind kind, bytes32 metadataHash, uint64 deadline, bytes calldata signature)
        external
    {
        if (device == address(0)) revert ZeroAddress();
        if (kind == DeviceKind.None) revert InvalidDeviceKind(uint8(kind));
        // Every key ever used stays in _keys, and a device id is its first key: this also rejects re-registration.
        if (_keys[device].status != KeyStatus.None) revert KeyAlreadyUsed(device);
        _checkDeadline(deadline);
        _checkSignature(hashRegistration(device, msg.sender, kind, metadataHash, deadline), signature, device);

        _devices[device] = Device({
            owner: msg.sender,
            kind: kind,
            status: DeviceStatus.Active,
            registeredAt: uint64(block.timestamp),
            key: device,
            rotations: 0,
            metadataHash: metadataHash
        });
        _keys[device] = KeyRecord({device: device, kind: kind, status: KeyStatus.Current, retiredAt: 0});
        emit DeviceRegistered(device, msg.sender, kind, metadataHash);
    }

    /// @inheritdoc IDeviceRegistry
    function rotateKey(address device, address newKey, uint64 deadline, bytes calldata signature) external {
        Device storage d = _activeDeviceOfSender(device);
        if (newKey == address(0)) revert ZeroAddress();
        if (_keys[newKey].status != KeyStatus.None) revert KeyAlreadyUsed(newKey);
        _checkDeadline(deadline);
        _checkSignature(hashKeyRotation(device, newKey, deadline), signature, newKey);

        address oldKey = d.key;
        KeyRecord storage old = _keys[oldKey];
        old.status = KeyStatus.Rotated;
        old.retiredAt = uint64(block.timestamp);
        _keys[newKey] = KeyRecord({device: device, kind: d.kind, status: KeyStatus.Current, retiredAt: 0});
        d.key = newKey;
        // A device cannot be rotated 2^32 times, nor the registry retire 2^64 keys: each costs a transaction.
        unchecked {
            d.rotations += 1;
            ++_keyEpoch;
        }
        emit KeyRotated(device, oldKey, newKey);
    }

    /// @inheritdoc IDeviceRegistry
    function revoke(address device) external {
        Device storage d = _activeDeviceOfSender(device);
        d.status = DeviceStatus.Revoked;
        KeyRecord storage k = _keys[d.key];
        k.status = KeyStatus.Revoked;
        k.retiredAt = uint64(block.timestamp);
        // Cannot reach 2^64: each retirement costs a transaction.
        unchecked {
            ++_keyEpoch;
        }
        emit DeviceRevoked(device, d.key);
    }

    /// @inheritdoc IDeviceRegistry
    function updateMetadata(address device, bytes32 metadataHash) external {
        Device storage d = _activeDeviceOfSender(device);
        d.metadataHash = metadataHash;
        emit MetadataUpdated(device, metadataHash);
    }

    /// @inheritdoc IDeviceRegistry
    function deviceOf(address device) external view returns (Device memory) {
        return _devices[device];
    }

    /// @inheritdoc IDeviceRegistry
    function keyInfo(address key)
        external
        view
        returns (address device, DeviceKind kind, KeyStatus status, uint64 retiredAt)
    {
        // Called once per settled event by the products: read the packed record with one SLOAD (Solidity would
        // load the slot once per field). Layout as Solidity packs {KeyRecord}: device 0..159 | kind 160..167 |
        // status 168..175 | retiredAt 176..239.
        KeyRecord storage k = _keys[key];
        uint256 word;
        assembly ("memory-safe") {
            word := sload(k.slot)
        }
        return
            (address(uint160(word)), DeviceKind(uint8(word >> 160)), KeyStatus(uint8(word >> 168)), uint64(word >> 176));
    }

    /// @inheritdoc IDeviceRegistry
    function keyEpoch() external view returns (uint64) {
        return _keyEpoch;
    }

    /// @inheritdoc IDeviceRegistry
    function hashRegistration(address device, address owner, DeviceKind kind, bytes32 metadataHash, uint64 deadline)
        public
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(
            keccak256(abi.encode(REGISTRATION_TYPEHASH, device, owner, uint8(kind), metadataHash, deadline))
        );
    }

    /// @inheritdoc IDeviceRegistry
    function hashKeyRotation(address device, address newKey, uint64 deadline) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(KEY_ROTATION_TYPEHASH, device, newKey, deadline)));
    }

    function _activeDeviceOfSender(address device) private view returns (Device storage d) {
        d = _devices[device];
        if (d.status == DeviceStatus.None) revert UnknownDevice(device);
        if (d.owner != msg.sender) revert NotDeviceOwner(device, msg.sender);
        if (d.status != DeviceStatus.Active) revert DeviceNotActive(device);
    }

    function _checkDeadline(uint64 deadline) private view {
        if (deadline < block.timestamp) revert SignatureExpired(deadline, block.timestamp);
    }

    /// @dev `signature` is 65 bytes r ‖ s ‖ v as devices produce it; OpenZeppelin ECDSA rejects high s and v ∉ {27, 28}.
    function _checkSignature(bytes32 digest, bytes calldata signature, address expected) private pure {
        (address signer, ECDSA.RecoverError err, bytes32 arg) = ECDSA.tryRecover(digest, signature);
        if (err == ECDSA.RecoverError.InvalidSignatureLength) revert SignatureLength(uint256(arg));
        if (err == ECDSA.RecoverError.InvalidSignatureS) revert SignatureMalleable(arg);
        if (err == ECDSA.RecoverError.InvalidSignature) revert SignatureInvalid();
        if (signer != expected) revert WrongSigner(expected, signer);
    }
}
