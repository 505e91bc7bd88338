// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ICommonErrors} from "./ICommonErrors.sol";

/// @title On-chain identity of IoT devices.
/// @notice A device's stable id is the address of the key it was first registered with. Its owner can rotate
/// the signing key (the new key takes over everything that refers to the device id) and revoke the device.
/// Keys are single-use: a key that was ever registered or rotated in can never be used again.
interface IDeviceRegistry is ICommonErrors {
    /// @notice Same numbering as `iotsettle.oracle.protocol.device_kinds.DeviceKind`; 0 is invalid.
    enum DeviceKind {
        None,
        Meter,
        Tracker,
        Vehicle,
        WeatherStation,
        Wearable
    }

    enum DeviceStatus {
        None,
        Active,
        Revoked
    }

    /// @notice State of a signing key. Current keys sign freely; a Rotated or Revoked key's signatures are accepted
    /// only for events dated at or before its `retiredAt` and relayed within SETTLEMENT_GRACE of it (see {keyInfo}).
    enum KeyStatus {
        None,
        Current,
        Rotated,
        Revoked
    }

    struct Device {
        address owner;
        DeviceKind kind;
        DeviceStatus status;
        uint64 registeredAt;
        address key;
        uint32 rotations;
        bytes32 metadataHash;
    }

    /// @notice Emitted when `owner` registers `device` (proved by the device key's Registration signature).
    event DeviceRegistered(address indexed device, address indexed owner, DeviceKind kind, bytes32 metadataHash);
    /// @notice Emitted when the owner moves `device` from `oldKey` to `newKey`.
    event KeyRotated(address indexed device, address indexed oldKey, address indexed newKey);
    /// @notice Emitted when the owner revokes `device`; `key` stops being accepted.
    event DeviceRevoked(address indexed device, address indexed key);
    /// @notice Emitted when the owner replaces the metadata hash.
    event MetadataUpdated(address indexed device, bytes32 metadataHash);

    error InvalidDeviceKind(uint8 kind);
    error SignatureExpired(uint64 deadline, uint256 timestamp);
    error SignatureInvalid();
    error SignatureMalleable(bytes32 s);
    error SignatureLength(uint256 length);
    error WrongSigner(address expected, address recovered);
    error KeyAlreadyUsed(address key);
    error NotDeviceOwner(address device, address caller);
    error DeviceNotActive(address device);

    /// @notice Register `device` to msg.sender. `signature` (65 bytes r‖s‖v) is the device key's EIP-712
    /// `Registration(device, msg.sender, kind, metadataHash, deadline)`. Emits a {DeviceRegistered} event.
    function register(address device, DeviceKind kind, bytes32 metadataHash, uint64 deadline, bytes calldata signature)
        external;

    /// @notice Owner only: make `newKey` the device's signing key. `signature` is `newKey`'s EIP-712
    /// `KeyRotation(device, newKey, deadline)`. The old key is retired now: products accept its signatures only for
    /// events dated at or before this block and relayed within their SETTLEMENT_GRACE. Emits a {KeyRotated} event.
    function rotateKey(address device, address newKey, uint64 deadline, bytes calldata signature) external;

    /// @notice Owner only: revoke the device for good. Its current key is retired now: products accept its
    /// signatures only for events dated at or before this block and relayed within their SETTLEMENT_GRACE, so
    /// revoking cannot erase what the device already signed. Emits a {DeviceRevoked} event.
    function revoke(address device) external;

    /// @notice Owner only: replace the metadata hash. Emits a {MetadataUpdated} event.
    function updateMetadata(address device, bytes32 metadataHash) external;

    /// @notice The full record of `device` (all zero if never registered).
    function deviceOf(address device) external view returns (Device memory);

    /// @notice What `key` signs for: its device id, the device kind, the key's status and `retiredAt`, the block
    /// time the key was rotated out or its device revoked (0 while Current or unknown). One storage slot.
    function keyInfo(address key)
        external
        view
        returns (address device, DeviceKind kind, KeyStatus status, uint64 retiredAt);

    /// @notice A counter bumped by every {rotateKey} and {revoke}: the only calls that change the record of a key
    /// that is Current ({register} only turns an unknown key Current; kinds never change). A product may cache
    /// `keyInfo` of a Current key stamped with this value and trust it only while the value is unchanged, so a
    /// retirement reaches every cache in the very next transaction.
    function keyEpoch() external view returns (uint64);

    /// @notice The EIP-712 digest a device key signs to consent to registration.
    function hashRegistration(address device, address owner, DeviceKind kind, bytes32 metadataHash, uint64 deadline)
        external
        view
        returns (bytes32);

    /// @notice The EIP-712 digest a new key signs to take over `device`.
    function hashKeyRotation(address device, address newKey, uint64 deadline) external view returns (bytes32);
}
