// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {DeviceEventVerifier} from "../../contracts/DeviceEventVerifier.sol";
import {IDeviceEvents} from "../../contracts/interfaces/IDeviceEvents.sol";
import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {Fixture} from "./utils/Fixture.sol";

/// @dev Exposes the shared checks so every reason they can give is shown, including WrongDeviceKind, which the
/// two products cannot reach (they check the kind when an agreement or escrow is created, and kinds never change).
contract VerifierHarness is DeviceEventVerifier {
    constructor(IDeviceRegistry registry_) DeviceEventVerifier(registry_) {}

    function checkSigner(bytes32 structHash, bytes32 r, bytes32 vs, address device, uint256 kindMask, uint64 timestamp)
        external
        view
        returns (RejectReason)
    {
        return _checkSigner(structHash, r, vs, device, kindMask, timestamp);
    }

    function checkTimestamp(uint64 timestamp, uint256 notBefore) external view returns (RejectReason) {
        return _checkTimestamp(timestamp, notBefore);
    }

    function digest(bytes32 structHash) external view returns (bytes32) {
        return _hashTypedDataV4(structHash);
    }
}

contract DeviceEventVerifierTest is Fixture {
    VerifierHarness internal harness;
    uint256 internal key = deviceKey(60);
    address internal device;
    bytes32 internal constant SH = keccak256("some struct");
    uint256 internal constant TRACKER_ONLY = 1 << 2;
    uint256 internal constant METER_ONLY = 1 << 1;

    function setUp() public override {
        super.setUp();
        harness = new VerifierHarness(registry);
        device = registerDevice(key, IDeviceRegistry.DeviceKind.Tracker, owner);
    }

    function now_() internal view returns (uint64) {
        return uint64(vm.getBlockTimestamp());
    }

    function _sig(uint256 k) internal view returns (bytes32 r, bytes32 vs) {
        return vm.signCompact(k, harness.digest(SH));
    }

    function test_RevertWhen_ZeroRegistry() public {
        vm.expectRevert(abi.encodeWithSelector(DeviceEventVerifier.ZeroRegistry.selector));
        new VerifierHarness(IDeviceRegistry(address(0)));
    }

    function test_Registry_AndSkew() public view {
        assertEq(harness.registry(), address(registry));
        assertEq(harness.MAX_CLOCK_SKEW(), 300);
    }

    function test_CheckSigner_EveryReason() public {
        (bytes32 r, bytes32 vs) = _sig(key);
        assertEq(
            uint8(harness.checkSigner(SH, r, vs, device, TRACKER_ONLY, now_())), uint8(IDeviceEvents.RejectReason.None)
        );
        assertEq(
            uint8(harness.checkSigner(SH, r, vs, device, METER_ONLY, now_())),
            uint8(IDeviceEvents.RejectReason.WrongDeviceKind)
        );
        assertEq(
            uint8(harness.checkSigner(SH, r, vs, relayer, TRACKER_ONLY, now_())),
            uint8(IDeviceEvents.RejectReason.WrongDevice)
        );
        assertEq(
            uint8(harness.checkSigner(SH, bytes32(0), vs, device, TRACKER_ONLY, now_())),
            uint8(IDeviceEvents.RejectReason.SignatureInvalid)
        );
        bytes32 highVs = bytes32((uint256(vs) & (1 << 255)) | (SECP256K1_N / 2 + 1));
        assertEq(
            uint8(harness.checkSigner(SH, r, highVs, device, TRACKER_ONLY, now_())),
            uint8(IDeviceEvents.RejectReason.SignatureMalleable)
        );
        (bytes32 r2, bytes32 vs2) = _sig(deviceKey(61));
        assertEq(
            uint8(harness.checkSigner(SH, r2, vs2, device, TRACKER_ONLY, now_())),
            uint8(IDeviceEvents.RejectReason.UnknownKey)
        );
        rotate(device, deviceKey(62), owner);
        // Events dated after the retirement: refused with the retirement's reason.
        vm.warp(vm.getBlockTimestamp() + 1);
        assertEq(
            uint8(harness.checkSigner(SH, r, vs, device, TRACKER_ONLY, now_())),
            uint8(IDeviceEvents.RejectReason.KeyRotated)
        );
        vm.prank(owner);
        registry.revoke(device);
        vm.warp(vm.getBlockTimestamp() + 1);
        (bytes32 r3, bytes32 vs3) = _sig(deviceKey(62));
        assertEq(
            uint8(harness.checkSigner(SH, r3, vs3, device, TRACKER_ONLY, now_())),
            uint8(IDeviceEvents.RejectReason.DeviceRevoked)
        );
    }

    // ---------------------------------------------------------------- retired keys

    function _check(uint256 k, uint64 timestamp) internal view returns (IDeviceEvents.RejectReason) {
        (bytes32 r, bytes32 vs) = _sig(k);
        return harness.checkSigner(SH, r, vs, device, TRACKER_ONLY, timestamp);
    }

    function test_RetiredKey_RevokedSignedBeforeSettlesWithinGrace() public {
        vm.warp(block.timestamp + 1 days);
        uint64 signedAt = now_() - 10 minutes;
        vm.prank(owner);
        registry.revoke(device);
        uint64 retiredAt = now_();
        assertEq(uint8(_check(key, signedAt)), uint8(IDeviceEvents.RejectReason.None));
        assertEq(uint8(_check(key, retiredAt)), uint8(IDeviceEvents.RejectReason.None), "signed in the same block");
        vm.warp(retiredAt + harness.SETTLEMENT_GRACE());
        assertEq(uint8(_check(key, signedAt)), uint8(IDeviceEvents.RejectReason.None), "last second of the grace");
    }

    function test_RetiredKey_RevokedSignedAfterIsRefused() public {
        vm.prank(owner);
        registry.revoke(device);
        assertEq(uint8(_check(key, now_() + 1)), uint8(IDeviceEvents.RejectReason.DeviceRevoked));
        vm.warp(vm.getBlockTimestamp() + 10 minutes);
        assertEq(uint8(_check(key, now_())), uint8(IDeviceEvents.RejectReason.DeviceRevoked));
    }

    function test_RetiredKey_RevokedSignedBeforeRelayedAfterGraceIsRefused() public {
        uint64 signedAt = now_();
        vm.prank(owner);
        registry.revoke(device);
        vm.warp(block.timestamp + harness.SETTLEMENT_GRACE() + 1);
        assertEq(uint8(_check(key, signedAt)), uint8(IDeviceEvents.RejectReason.DeviceRevoked));
    }

    function test_RetiredKey_RotatedSignedBeforeSettlesWithinGrace() public {
        uint64 signedAt = now_();
        vm.warp(block.timestamp + 30 minutes);
        rotate(device, deviceKey(63), owner);
        uint64 retiredAt = now_();
        vm.warp(retiredAt + harness.SETTLEMENT_GRACE());
        assertEq(uint8(_check(key, signedAt)), uint8(IDeviceEvents.RejectReason.None));
        assertEq(uint8(_check(deviceKey(63), now_())), uint8(IDeviceEvents.RejectReason.None), "new key signs");
    }

    function test_RetiredKey_RotatedSignedAfterIsRefused() public {
        rotate(device, deviceKey(63), owner);
        assertEq(uint8(_check(key, now_() + 1)), uint8(IDeviceEvents.RejectReason.KeyRotated));
    }

    function test_RetiredKey_RotatedSignedBeforeRelayedAfterGraceIsRefused() public {
        uint64 signedAt = now_();
        rotate(device, deviceKey(63), owner);
        vm.warp(block.timestamp + harness.SETTLEMENT_GRACE() + 1);
        assertEq(uint8(_check(key, signedAt)), uint8(IDeviceEvents.RejectReason.KeyRotated));
    }

    /// @dev The wrong device and an unknown key are refused whatever the timestamp: a retired key still speaks
    /// only for its own device.
    function test_RetiredKey_StillOnlyItsOwnDevice() public {
        uint64 signedAt = now_();
        vm.prank(owner);
        registry.revoke(device);
        (bytes32 r, bytes32 vs) = _sig(key);
        assertEq(
            uint8(harness.checkSigner(SH, r, vs, relayer, TRACKER_ONLY, signedAt)),
            uint8(IDeviceEvents.RejectReason.WrongDevice)
        );
    }

    function testFuzz_RetiredKey_Window(uint256 signedSeed, uint256 relaySeed, bool revokeIt) public {
        vm.warp(10 days);
        uint64 signedAt = uint64(bound(signedSeed, 1 days, 20 days));
        if (revokeIt) {
            vm.prank(owner);
            registry.revoke(device);
        } else {
            rotate(device, deviceKey(63), owner);
        }
        uint64 retiredAt = now_();
        vm.warp(bound(relaySeed, retiredAt, retiredAt + 3 hours));
        IDeviceEvents.RejectReason want = IDeviceEvents.RejectReason.None;
        if (signedAt > retiredAt || block.timestamp > retiredAt + harness.SETTLEMENT_GRACE()) {
            want = revokeIt ? IDeviceEvents.RejectReason.DeviceRevoked : IDeviceEvents.RejectReason.KeyRotated;
        }
        assertEq(uint8(_check(key, signedAt)), uint8(want));
    }

    /// @dev The precompile accepts only v ∈ {27, 28}; in the compact form the top bit of vs picks one, so the
    /// signature's twin with the other v recovers some other address, never the device.
    function test_CheckSigner_FlippedVBitIsNotTheDevice() public view {
        (bytes32 r, bytes32 vs) = _sig(key);
        bytes32 flipped = bytes32(uint256(vs) ^ (1 << 255));
        assertTrue(harness.checkSigner(SH, r, flipped, device, TRACKER_ONLY, now_()) != IDeviceEvents.RejectReason.None);
    }

    function testFuzz_CheckTimestamp(uint64 ts, uint64 notBefore) public view {
        IDeviceEvents.RejectReason reason = harness.checkTimestamp(ts, notBefore);
        if (ts > block.timestamp + 300) assertEq(uint8(reason), uint8(IDeviceEvents.RejectReason.TimestampInFuture));
        else if (ts < notBefore) assertEq(uint8(reason), uint8(IDeviceEvents.RejectReason.TimestampTooOld));
        else assertEq(uint8(reason), uint8(IDeviceEvents.RejectReason.None));
    }
}
