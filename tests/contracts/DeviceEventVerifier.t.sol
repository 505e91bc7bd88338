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

    function checkSigner(bytes32 structHash, bytes32 r, bytes32 vs, address device, uint256 kindMask)
        external
        view
        returns (RejectReason)
    {
        return _checkSigner(structHash, r, vs, device, kindMask);
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
        assertEq(uint8(harness.checkSigner(SH, r, vs, device, TRACKER_ONLY)), uint8(IDeviceEvents.RejectReason.None));
        assertEq(
            uint8(harness.checkSigner(SH, r, vs, device, METER_ONLY)), uint8(IDeviceEvents.RejectReason.WrongDeviceKind)
        );
        assertEq(
            uint8(harness.checkSigner(SH, r, vs, relayer, TRACKER_ONLY)), uint8(IDeviceEvents.RejectReason.WrongDevice)
        );
        assertEq(
            uint8(harness.checkSigner(SH, bytes32(0), vs, device, TRACKER_ONLY)),
            uint8(IDeviceEvents.RejectReason.SignatureInvalid)
        );
        bytes32 highVs = bytes32((uint256(vs) & (1 << 255)) | (SECP256K1_N / 2 + 1));
        assertEq(
            uint8(harness.checkSigner(SH, r, highVs, device, TRACKER_ONLY)),
            uint8(IDeviceEvents.RejectReason.SignatureMalleable)
        );
        (bytes32 r2, bytes32 vs2) = _sig(deviceKey(61));
        assertEq(
            uint8(harness.checkSigner(SH, r2, vs2, device, TRACKER_ONLY)), uint8(IDeviceEvents.RejectReason.UnknownKey)
        );
        rotate(device, deviceKey(62), owner);
        assertEq(
            uint8(harness.checkSigner(SH, r, vs, device, TRACKER_ONLY)), uint8(IDeviceEvents.RejectReason.KeyRotated)
        );
        vm.prank(owner);
        registry.revoke(device);
        (bytes32 r3, bytes32 vs3) = _sig(deviceKey(62));
        assertEq(
            uint8(harness.checkSigner(SH, r3, vs3, device, TRACKER_ONLY)),
            uint8(IDeviceEvents.RejectReason.DeviceRevoked)
        );
    }

    /// @dev The precompile accepts only v ∈ {27, 28}; in the compact form the top bit of vs picks one, so the
    /// signature's twin with the other v recovers some other address, never the device.
    function test_CheckSigner_FlippedVBitIsNotTheDevice() public view {
        (bytes32 r, bytes32 vs) = _sig(key);
        bytes32 flipped = bytes32(uint256(vs) ^ (1 << 255));
        assertTrue(harness.checkSigner(SH, r, flipped, device, TRACKER_ONLY) != IDeviceEvents.RejectReason.None);
    }

    function testFuzz_CheckTimestamp(uint64 ts, uint64 notBefore) public view {
        IDeviceEvents.RejectReason reason = harness.checkTimestamp(ts, notBefore);
        if (ts > block.timestamp + 300) assertEq(uint8(reason), uint8(IDeviceEvents.RejectReason.TimestampInFuture));
        else if (ts < notBefore) assertEq(uint8(reason), uint8(IDeviceEvents.RejectReason.TimestampTooOld));
        else assertEq(uint8(reason), uint8(IDeviceEvents.RejectReason.None));
    }
}
