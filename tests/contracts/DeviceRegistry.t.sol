// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {ICommonErrors} from "../../contracts/interfaces/ICommonErrors.sol";
import {Fixture} from "./utils/Fixture.sol";

contract DeviceRegistryTest is Fixture {
    uint256 internal key = deviceKey(1);
    address internal device;
    bytes32 internal constant META = bytes32(uint256(0xfeed));
    IDeviceRegistry.DeviceKind internal constant METER = IDeviceRegistry.DeviceKind.Meter;

    function setUp() public override {
        super.setUp();
        device = vm.addr(key);
    }

    function _regSig(uint256 signer, address who, IDeviceRegistry.DeviceKind kind, uint64 deadline)
        internal
        view
        returns (bytes memory)
    {
        return sign65(signer, registry.hashRegistration(device, who, kind, META, deadline));
    }

    function _rotSig(uint256 signer, address newKey, uint64 deadline) internal view returns (bytes memory) {
        return sign65(signer, registry.hashKeyRotation(device, newKey, deadline));
    }

    function _register() internal {
        uint64 deadline = uint64(block.timestamp);
        bytes memory sig = _regSig(key, owner, METER, deadline);
        vm.prank(owner);
        registry.register(device, METER, META, deadline, sig);
    }

    // ---------------------------------------------------------------- register

    function test_Register_StoresDeviceAndCurrentKey() public {
        vm.expectEmit(address(registry));
        emit IDeviceRegistry.DeviceRegistered(device, owner, METER, META);
        _register();

        IDeviceRegistry.Device memory d = registry.deviceOf(device);
        assertEq(d.owner, owner);
        assertEq(uint8(d.kind), uint8(METER));
        assertEq(uint8(d.status), uint8(IDeviceRegistry.DeviceStatus.Active));
        assertEq(d.registeredAt, block.timestamp);
        assertEq(d.key, device);
        assertEq(d.rotations, 0);
        assertEq(d.metadataHash, META);
        (address keyDevice, IDeviceRegistry.DeviceKind kind, IDeviceRegistry.KeyStatus status, uint64 retiredAt) =
            registry.keyInfo(device);
        assertEq(keyDevice, device);
        assertEq(uint8(kind), uint8(METER));
        assertEq(uint8(status), uint8(IDeviceRegistry.KeyStatus.Current));
        assertEq(retiredAt, 0, "a current key is not retired");
    }

    function testFuzz_Register_AnyKeyAnyKind(uint256 keySeed, uint8 kindSeed) public {
        uint256 k = bound(keySeed, 1, SECP256K1_N - 1);
        IDeviceRegistry.DeviceKind kind = IDeviceRegistry.DeviceKind(bound(kindSeed, 1, 4));
        address d = registerDevice(k, kind, owner);
        (address keyDevice, IDeviceRegistry.DeviceKind stored,,) = registry.keyInfo(d);
        assertEq(keyDevice, d);
        assertEq(uint8(stored), uint8(kind));
    }

    function test_UnknownKey_HasNoRecord() public view {
        (address keyDevice,, IDeviceRegistry.KeyStatus status,) = registry.keyInfo(device);
        assertEq(keyDevice, address(0));
        assertEq(uint8(status), uint8(IDeviceRegistry.KeyStatus.None));
        assertEq(uint8(registry.deviceOf(device).status), uint8(IDeviceRegistry.DeviceStatus.None));
    }

    function test_RevertWhen_Register_ZeroDevice() public {
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.ZeroAddress.selector));
        vm.prank(owner);
        registry.register(address(0), METER, META, uint64(block.timestamp), new bytes(65));
    }

    function test_RevertWhen_Register_KindNone() public {
        bytes memory sig = _regSig(key, owner, IDeviceRegistry.DeviceKind.None, uint64(block.timestamp));
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.InvalidDeviceKind.selector, uint8(0)));
        vm.prank(owner);
        registry.register(device, IDeviceRegistry.DeviceKind.None, META, uint64(block.timestamp), sig);
    }

    function test_RevertWhen_Register_Twice() public {
        _register();
        bytes memory sig = _regSig(key, owner, METER, uint64(block.timestamp));
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.KeyAlreadyUsed.selector, device));
        vm.prank(owner);
        registry.register(device, METER, META, uint64(block.timestamp), sig);
    }

    function test_RevertWhen_Register_KeyThatWasRotatedIn() public {
        _register();
        uint256 newKey = deviceKey(2);
        rotate(device, newKey, owner);
        address newAddr = vm.addr(newKey);
        uint64 deadline = uint64(block.timestamp);
        bytes memory sig = sign65(newKey, registry.hashRegistration(newAddr, owner, METER, META, deadline));
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.KeyAlreadyUsed.selector, newAddr));
        vm.prank(owner);
        registry.register(newAddr, METER, META, deadline, sig);
    }

    function test_Register_DeadlineEdges() public {
        uint64 deadline = uint64(block.timestamp + 10);
        bytes memory sig = _regSig(key, owner, METER, deadline);
        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.SignatureExpired.selector, deadline, deadline + 1));
        vm.prank(owner);
        registry.register(device, METER, META, deadline, sig);

        vm.warp(deadline); // the deadline second itself is still valid
        vm.prank(owner);
        registry.register(device, METER, META, deadline, sig);
        assertEq(registry.deviceOf(device).owner, owner);
    }

    function test_RevertWhen_Register_HighS() public {
        bytes memory sig = highS(_regSig(key, owner, METER, uint64(block.timestamp)));
        (, bytes32 s,) = split(sig);
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.SignatureMalleable.selector, s));
        vm.prank(owner);
        registry.register(device, METER, META, uint64(block.timestamp), sig);
    }

    function test_RevertWhen_Register_CompactSignature64Bytes() public {
        bytes32 digest = registry.hashRegistration(device, owner, METER, META, uint64(block.timestamp));
        (bytes32 r, bytes32 vs) = vm.signCompact(key, digest);
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.SignatureLength.selector, uint256(64)));
        vm.prank(owner);
        registry.register(device, METER, META, uint64(block.timestamp), abi.encodePacked(r, vs));
    }

    function test_RevertWhen_Register_VZeroOrOne() public {
        (bytes32 r, bytes32 s, uint8 v) = split(_regSig(key, owner, METER, uint64(block.timestamp)));
        for (uint8 raw = 0; raw < 2; ++raw) {
            bytes memory sig = abi.encodePacked(r, s, raw == 0 ? v - 27 : 1 - (v - 27));
            vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.SignatureInvalid.selector));
            vm.prank(owner);
            registry.register(device, METER, META, uint64(block.timestamp), sig);
        }
    }

    function testFuzz_RevertWhen_Register_Garbage(bytes32 r, bytes32 s, uint8 v) public {
        s = bytes32(bound(uint256(s), 1, SECP256K1_N / 2));
        bytes memory sig = abi.encodePacked(r, s, v);
        address recovered = ecrecover(registry.hashRegistration(device, owner, METER, META, 1e10), v, r, s);
        if (recovered == address(0)) {
            vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.SignatureInvalid.selector));
        } else {
            vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.WrongSigner.selector, device, recovered));
        }
        vm.prank(owner);
        registry.register(device, METER, META, 1e10, sig);
    }

    function test_RevertWhen_Register_SentByAnotherThanTheNamedOwner() public {
        bytes32 digest = registry.hashRegistration(device, owner, METER, META, uint64(block.timestamp));
        bytes memory sig = sign65(key, digest);
        (bytes32 r, bytes32 s, uint8 v) = split(sig);
        // relayed by someone else: the contract checks the signature against msg.sender as owner
        address recovered =
            ecrecover(registry.hashRegistration(device, relayer, METER, META, uint64(block.timestamp)), v, r, s);
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.WrongSigner.selector, device, recovered));
        vm.prank(relayer);
        registry.register(device, METER, META, uint64(block.timestamp), sig);
    }

    /// @dev A registration signed under any other domain (name, version, chain id, verifying contract) is refused.
    function testFuzz_RevertWhen_Register_WrongDomain(uint8 which) public {
        which = uint8(bound(which, 0, 3));
        uint64 deadline = uint64(block.timestamp);
        bytes32 sh =
            keccak256(abi.encode(registry.REGISTRATION_TYPEHASH(), device, owner, uint8(METER), META, deadline));
        bytes32 digest = digestUnder(
            which == 0 ? "iotsettlE" : "iotsettle",
            which == 1 ? "2" : "1",
            which == 2 ? block.chainid + 1 : block.chainid,
            which == 3 ? address(billing) : address(registry),
            sh
        );
        assertEq(
            digestUnder("iotsettle", "1", block.chainid, address(registry), sh),
            registry.hashRegistration(device, owner, METER, META, deadline),
            "the right domain reproduces the contract digest"
        );
        bytes memory sig = sign65(key, digest);
        (bytes32 r, bytes32 s, uint8 v) = split(sig);
        address recovered = ecrecover(registry.hashRegistration(device, owner, METER, META, deadline), v, r, s);
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.WrongSigner.selector, device, recovered));
        vm.prank(owner);
        registry.register(device, METER, META, deadline, sig);
    }

    function test_RevertWhen_Register_AfterChainIdChange() public {
        bytes memory sig = _regSig(key, owner, METER, uint64(block.timestamp));
        vm.chainId(block.chainid + 1);
        (bytes32 r, bytes32 s, uint8 v) = split(sig);
        address recovered =
            ecrecover(registry.hashRegistration(device, owner, METER, META, uint64(block.timestamp)), v, r, s);
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.WrongSigner.selector, device, recovered));
        vm.prank(owner);
        registry.register(device, METER, META, uint64(block.timestamp), sig);
    }

    // ---------------------------------------------------------------- rotate

    function test_RotateKey_NewKeyTakesOverOldKeyRetired() public {
        _register();
        uint256 newKey = deviceKey(2);
        address newAddr = vm.addr(newKey);
        vm.expectEmit(address(registry));
        emit IDeviceRegistry.KeyRotated(device, device, newAddr);
        rotate(device, newKey, owner);

        IDeviceRegistry.Device memory d = registry.deviceOf(device);
        assertEq(d.key, newAddr);
        assertEq(d.rotations, 1);
        (address keyDevice, IDeviceRegistry.DeviceKind kind, IDeviceRegistry.KeyStatus status, uint64 retiredAt) =
            registry.keyInfo(newAddr);
        assertEq(keyDevice, device, "the new key speaks for the stable device id");
        assertEq(uint8(kind), uint8(METER));
        assertEq(uint8(status), uint8(IDeviceRegistry.KeyStatus.Current));
        assertEq(retiredAt, 0);
        uint256 firstRotation = vm.getBlockTimestamp();
        (,, status, retiredAt) = registry.keyInfo(device);
        assertEq(uint8(status), uint8(IDeviceRegistry.KeyStatus.Rotated));
        assertEq(retiredAt, firstRotation, "the old key is retired at the rotation");

        vm.warp(vm.getBlockTimestamp() + 1 days);
        rotate(device, deviceKey(3), owner);
        (,, status, retiredAt) = registry.keyInfo(newAddr);
        assertEq(uint8(status), uint8(IDeviceRegistry.KeyStatus.Rotated));
        assertEq(retiredAt, vm.getBlockTimestamp());
        (,,, retiredAt) = registry.keyInfo(device);
        assertEq(retiredAt, firstRotation, "a later rotation leaves earlier retirements alone");
        assertEq(registry.deviceOf(device).rotations, 2);
    }

    function test_RevertWhen_RotateKey_UnknownDevice() public {
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.UnknownDevice.selector, device));
        vm.prank(owner);
        registry.rotateKey(device, vm.addr(deviceKey(2)), uint64(block.timestamp), new bytes(65));
    }

    function test_RevertWhen_RotateKey_NotOwner() public {
        _register();
        uint256 newKey = deviceKey(2);
        bytes memory sig = _rotSig(newKey, vm.addr(newKey), uint64(block.timestamp));
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.NotDeviceOwner.selector, device, relayer));
        vm.prank(relayer);
        registry.rotateKey(device, vm.addr(newKey), uint64(block.timestamp), sig);
    }

    function test_RevertWhen_RotateKey_Revoked() public {
        _register();
        vm.prank(owner);
        registry.revoke(device);
        uint256 newKey = deviceKey(2);
        bytes memory sig = _rotSig(newKey, vm.addr(newKey), uint64(block.timestamp));
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.DeviceNotActive.selector, device));
        vm.prank(owner);
        registry.rotateKey(device, vm.addr(newKey), uint64(block.timestamp), sig);
    }

    function test_RevertWhen_RotateKey_ZeroKey() public {
        _register();
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.ZeroAddress.selector));
        vm.prank(owner);
        registry.rotateKey(device, address(0), uint64(block.timestamp), new bytes(65));
    }

    function test_RevertWhen_RotateKey_BackToAnOldKey() public {
        _register();
        rotate(device, deviceKey(2), owner);
        bytes memory sig = _rotSig(key, device, uint64(block.timestamp));
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.KeyAlreadyUsed.selector, device));
        vm.prank(owner);
        registry.rotateKey(device, device, uint64(block.timestamp), sig);
    }

    function test_RevertWhen_RotateKey_ToAnotherDevicesKey() public {
        _register();
        uint256 otherKey = deviceKey(9);
        address other = registerDevice(otherKey, METER, consumer);
        bytes memory sig = _rotSig(otherKey, other, uint64(block.timestamp));
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.KeyAlreadyUsed.selector, other));
        vm.prank(owner);
        registry.rotateKey(device, other, uint64(block.timestamp), sig);
    }

    function test_RevertWhen_RotateKey_Expired() public {
        _register();
        uint256 newKey = deviceKey(2);
        uint64 deadline = uint64(block.timestamp);
        bytes memory sig = _rotSig(newKey, vm.addr(newKey), deadline);
        vm.warp(block.timestamp + 1);
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.SignatureExpired.selector, deadline, deadline + 1));
        vm.prank(owner);
        registry.rotateKey(device, vm.addr(newKey), deadline, sig);
    }

    function test_RevertWhen_RotateKey_SignedByOldKeyNotNewKey() public {
        _register();
        address newAddr = vm.addr(deviceKey(2));
        bytes memory sig = _rotSig(key, newAddr, uint64(block.timestamp));
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.WrongSigner.selector, newAddr, device));
        vm.prank(owner);
        registry.rotateKey(device, newAddr, uint64(block.timestamp), sig);
    }

    function test_RevertWhen_RotateKey_HighS() public {
        _register();
        uint256 newKey = deviceKey(2);
        bytes memory sig = highS(_rotSig(newKey, vm.addr(newKey), uint64(block.timestamp)));
        (, bytes32 s,) = split(sig);
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.SignatureMalleable.selector, s));
        vm.prank(owner);
        registry.rotateKey(device, vm.addr(newKey), uint64(block.timestamp), sig);
    }

    // ---------------------------------------------------------------- revoke and metadata

    function test_Revoke_KeyStopsAndRecordStays() public {
        _register();
        vm.expectEmit(address(registry));
        emit IDeviceRegistry.DeviceRevoked(device, device);
        vm.prank(owner);
        registry.revoke(device);
        assertEq(uint8(registry.deviceOf(device).status), uint8(IDeviceRegistry.DeviceStatus.Revoked));
        (address keyDevice,, IDeviceRegistry.KeyStatus status, uint64 retiredAt) = registry.keyInfo(device);
        assertEq(keyDevice, device);
        assertEq(uint8(status), uint8(IDeviceRegistry.KeyStatus.Revoked));
        assertEq(retiredAt, block.timestamp, "the key is retired at the revocation");
    }

    function test_Revoke_AfterRotationRevokesCurrentKey() public {
        _register();
        uint256 newKey = deviceKey(2);
        rotate(device, newKey, owner);
        uint256 rotatedAt = vm.getBlockTimestamp();
        vm.warp(vm.getBlockTimestamp() + 1 days);
        vm.prank(owner);
        registry.revoke(device);
        (,, IDeviceRegistry.KeyStatus status, uint64 retiredAt) = registry.keyInfo(vm.addr(newKey));
        assertEq(uint8(status), uint8(IDeviceRegistry.KeyStatus.Revoked));
        assertEq(retiredAt, vm.getBlockTimestamp());
        (,, status, retiredAt) = registry.keyInfo(device);
        assertEq(uint8(status), uint8(IDeviceRegistry.KeyStatus.Rotated));
        assertEq(retiredAt, rotatedAt, "revocation keeps the rotated key's own retirement time");
    }

    function test_RevertWhen_Revoke_Twice() public {
        _register();
        vm.startPrank(owner);
        registry.revoke(device);
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.DeviceNotActive.selector, device));
        registry.revoke(device);
        vm.stopPrank();
    }

    function test_RevertWhen_Revoke_NotOwner() public {
        _register();
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.NotDeviceOwner.selector, device, relayer));
        vm.prank(relayer);
        registry.revoke(device);
    }

    function test_RevertWhen_Revoke_UnknownDevice() public {
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.UnknownDevice.selector, device));
        vm.prank(owner);
        registry.revoke(device);
    }

    function test_UpdateMetadata() public {
        _register();
        vm.expectEmit(address(registry));
        emit IDeviceRegistry.MetadataUpdated(device, bytes32("v2"));
        vm.prank(owner);
        registry.updateMetadata(device, bytes32("v2"));
        assertEq(registry.deviceOf(device).metadataHash, bytes32("v2"));
    }

    function test_RevertWhen_UpdateMetadata_NotOwner() public {
        _register();
        vm.expectRevert(abi.encodeWithSelector(IDeviceRegistry.NotDeviceOwner.selector, device, relayer));
        vm.prank(relayer);
        registry.updateMetadata(device, bytes32("v2"));
    }
}
