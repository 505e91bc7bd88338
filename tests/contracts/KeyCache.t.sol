// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {DeviceEventVerifier} from "../../contracts/DeviceEventVerifier.sol";
import {IDeviceEvents} from "../../contracts/interfaces/IDeviceEvents.sol";
import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {IMeteredBilling} from "../../contracts/interfaces/IMeteredBilling.sol";
import {IMotorInsurance} from "../../contracts/interfaces/IMotorInsurance.sol";
import {Fixture} from "./utils/Fixture.sol";
import {MotorFixture} from "./utils/MotorFixture.sol";

/// @dev Both signer checks side by side: the cached one must give the registry's verdict in every state.
contract CachedVerifierHarness is DeviceEventVerifier {
    constructor(IDeviceRegistry registry_) DeviceEventVerifier(registry_) {}

    function checkSigner(bytes32 structHash, bytes32 r, bytes32 vs, address device, uint256 kindMask, uint64 timestamp)
        external
        view
        returns (RejectReason)
    {
        return _checkSigner(structHash, r, vs, device, kindMask, timestamp);
    }

    function checkSignerCached(
        bytes32 structHash,
        bytes32 r,
        bytes32 vs,
        address device,
        uint256 kindMask,
        uint64 timestamp
    ) external returns (RejectReason reason) {
        // No stamp in, none issued: the cache alone.
        (reason,) = _checkSignerStamped(structHash, r, vs, device, kindMask, timestamp, _registryKeyEpoch(), 0, 0);
    }

    /// @dev The key stamp a product keeps in its own word (one per agreement: one kind mask per product).
    uint256 public stamp;

    function checkSignerStamped(
        bytes32 structHash,
        bytes32 r,
        bytes32 vs,
        address device,
        uint256 kindMask,
        uint64 timestamp,
        bool inBatch,
        uint256 stampMax
    ) external returns (RejectReason reason) {
        (reason, stamp) = _checkSignerStamped(
            structHash,
            r,
            vs,
            device,
            kindMask,
            timestamp,
            inBatch ? _registryKeyEpoch() : _NO_KEY_CACHE,
            stamp,
            stampMax
        );
    }

    function digest(bytes32 structHash) external view returns (bytes32) {
        return _hashTypedDataV4(structHash);
    }
}

/// @dev The key cache and key stamps of {DeviceEventVerifier._checkSignerStamped}: a key retired (rotated or
/// revoked) must stop at once, in the very next transaction, even when it was cached or stamped a moment before in
/// the same block; an entry can only hold what the registry answered for a Current key.
contract KeyCacheTest is Fixture {
    bytes32 internal constant CACHE_BASE = keccak256("iotsettle.DeviceEventVerifier.keyCache");
    uint64 internal constant START = 1000;
    uint256 internal constant DEPOSIT = 1e18;
    uint256 internal constant ANY_KIND = type(uint256).max;
    bytes32 internal constant SH = keccak256("some struct");

    uint256 internal meterKey = deviceKey(70);
    address internal meter;
    uint256 internal id;

    function setUp() public override {
        super.setUp();
        meter = registerDevice(meterKey, IDeviceRegistry.DeviceKind.Meter, owner);
        id = openAgreement(meter, flatTariff(3), START, DEPOSIT);
    }

    function _entry(address target, address key) internal view returns (uint256) {
        return uint256(vm.load(target, keccak256(abi.encode(key, CACHE_BASE))));
    }

    /// @dev The reading three times in one batch: batches of three or more check keys through the cache (smaller
    /// ones ask the registry); the copies after the first are refused (Replayed once it settled) and change nothing.
    function _settleOne(IMeteredBilling.SignedReading memory rd) internal returns (uint256) {
        IMeteredBilling.SignedReading[] memory batch = new IMeteredBilling.SignedReading[](3);
        batch[0] = rd;
        batch[1] = rd;
        batch[2] = rd;
        vm.prank(relayer);
        return billing.settle(packReadings(batch));
    }

    function _expectRefused(IMeteredBilling.SignedReading memory rd, IDeviceEvents.RejectReason reason) internal {
        vm.expectEmit(address(billing));
        emit IMeteredBilling.ReadingRejected(rd.agreementId, rd.seq, reason);
        assertEq(_settleOne(rd), 0, "refused");
    }

    // ---------------------------------------------------------------- retirement reaches the cache at once

    function test_RevokedBetweenTwoBatchesInTheSameBlock_IsRefused() public {
        assertEq(_settleOne(signReading(meterKey, id, 1, uint64(block.timestamp), START + 1)), 1, "cached and used");
        vm.prank(owner);
        registry.revoke(meter);
        // Same block: dated one second after the revocation (within the clock skew), so only the key check refuses.
        _expectRefused(
            signReading(meterKey, id, 2, uint64(block.timestamp) + 1, START + 2), IDeviceEvents.RejectReason.DeviceRevoked
        );
        assertEq(billing.agreementOf(id).lastSeq, 1, "nothing settled after the revocation");
    }

    function test_RotatedBetweenTwoBatchesInTheSameBlock_OldKeyIsRefused_NewKeySettles() public {
        assertEq(_settleOne(signReading(meterKey, id, 1, uint64(block.timestamp), START + 1)), 1);
        uint256 newKey = deviceKey(71);
        rotate(meter, newKey, owner);
        _expectRefused(
            signReading(meterKey, id, 2, uint64(block.timestamp) + 1, START + 2), IDeviceEvents.RejectReason.KeyRotated
        );
        assertEq(_settleOne(signReading(newKey, id, 2, uint64(block.timestamp) + 1, START + 2)), 1, "the new key");
    }

    function test_RotatedKey_KeepsItsGraceForWhatItSignedBefore() public {
        assertEq(_settleOne(signReading(meterKey, id, 1, uint64(block.timestamp), START + 1)), 1);
        uint64 retiredAt = uint64(block.timestamp);
        rotate(meter, deviceKey(72), owner);
        vm.warp(block.timestamp + 10);
        // Signed at the rotation, relayed within the grace: the registry's rule, unchanged by the cache.
        assertEq(_settleOne(signReading(meterKey, id, 2, retiredAt, START + 2)), 1);
        vm.warp(uint256(retiredAt) + billing.SETTLEMENT_GRACE() + 1);
        _expectRefused(signReading(meterKey, id, 3, retiredAt, START + 3), IDeviceEvents.RejectReason.KeyRotated);
    }

    function test_RevokingAnotherDevice_InvalidatesEveryEntry_AndTheNextBatchRefreshesIt() public {
        assertEq(_settleOne(signReading(meterKey, id, 1, uint64(block.timestamp), START + 1)), 1);
        uint256 before = _entry(address(billing), meter);
        assertEq(before >> 168, registry.keyEpoch(), "stamped with the epoch");
        address other = registerDevice(deviceKey(73), IDeviceRegistry.DeviceKind.Meter, owner);
        vm.prank(owner);
        registry.revoke(other);
        assertEq(registry.keyEpoch(), (before >> 168) + 1, "a revocation bumps the epoch");
        vm.warp(block.timestamp + 60);
        assertEq(_settleOne(signReading(meterKey, id, 2, uint64(block.timestamp), START + 2)), 1, "still Current");
        assertEq(_entry(address(billing), meter) >> 168, registry.keyEpoch(), "refreshed at the new epoch");
    }

    // ---------------------------------------------------------------- what an entry can hold

    function test_UnknownKey_IsNeverCached() public {
        uint256 stranger = deviceKey(74);
        address strangerAddress = vm.addr(stranger);
        _expectRefused(
            signReading(stranger, id, 1, uint64(block.timestamp), START + 1), IDeviceEvents.RejectReason.UnknownKey
        );
        assertEq(_entry(address(billing), strangerAddress), 0, "no entry for a key the registry does not know");
    }

    function test_RetiredKey_IsNeverCached_NorRefreshed() public {
        assertEq(_settleOne(signReading(meterKey, id, 1, uint64(vm.getBlockTimestamp()), START + 1)), 1);
        uint256 stamped = _entry(address(billing), meter);
        vm.prank(owner);
        registry.revoke(meter);
        vm.warp(vm.getBlockTimestamp() + 1);
        _expectRefused(
            signReading(meterKey, id, 2, uint64(vm.getBlockTimestamp()), START + 2), IDeviceEvents.RejectReason.DeviceRevoked
        );
        assertEq(_entry(address(billing), meter), stamped, "the stale entry stays stale: never trusted again");
    }

    function test_Entry_IsTheRegistrysAnswer() public view {
        // Written when the agreement was offered, from keyInfo at the registry's epoch.
        (address device, IDeviceRegistry.DeviceKind kind, IDeviceRegistry.KeyStatus status,) = registry.keyInfo(meter);
        assertEq(uint8(status), uint8(IDeviceRegistry.KeyStatus.Current));
        uint256 expected =
            uint256(uint160(device)) | (uint256(uint8(kind)) << 160) | (uint256(registry.keyEpoch()) << 168);
        assertEq(_entry(address(billing), meter), expected);
    }

    function test_RegisteringADevice_DoesNotInvalidate() public {
        uint64 epoch = registry.keyEpoch();
        registerDevice(deviceKey(75), IDeviceRegistry.DeviceKind.Meter, owner);
        assertEq(registry.keyEpoch(), epoch, "registration changes no Current key's record");
    }

    /// @dev Differential: whatever the registry did (registrations, rotations, revocations, time), the cached check
    /// and the stamped check (in a batch or alone, with stamps of any room, for a kind the product takes or not)
    /// give exactly the uncached verdict for the current key, the previous key and a stranger.
    function testFuzz_CachedVerdictIsTheRegistrysVerdict(uint256 seed) public {
        CachedVerifierHarness harness = new CachedVerifierHarness(registry);
        // One kind mask per harness, as a product has one: the device is a Tracker.
        uint256 mask = seed % 3 == 0 ? ~(uint256(1) << uint8(IDeviceRegistry.DeviceKind.Tracker)) : ANY_KIND;
        uint256 stampMax = [uint256(1), 2, 3, type(uint24).max][(seed >> 8) % 4];
        uint256 current = deviceKey(80);
        address device = registerDevice(current, IDeviceRegistry.DeviceKind.Tracker, owner);
        uint256 previous = deviceKey(81);
        uint256 next = 82;
        bool revoked;
        for (uint256 step = 0; step < 12; ++step) {
            uint256 op = uint256(keccak256(abi.encode(seed, step))) % 6;
            if (op == 0 && !revoked) {
                previous = current;
                current = deviceKey(next++);
                rotate(device, current, owner);
            } else if (op == 1 && !revoked) {
                vm.prank(owner);
                registry.revoke(device);
                revoked = true;
            } else if (op == 2) {
                vm.warp(block.timestamp + (uint256(keccak256(abi.encode(seed, step, "dt"))) % 2 hours));
            } else if (op == 3) {
                registerDevice(deviceKey(next++), IDeviceRegistry.DeviceKind.Meter, owner);
            }
            uint64 when = uint64(block.timestamp) - uint64(uint256(keccak256(abi.encode(seed, step, "t"))) % 120);
            bool inBatch = uint256(keccak256(abi.encode(seed, step, "batch"))) % 4 != 0;
            _assertSameVerdict(harness, current, device, when, mask, inBatch, stampMax);
            _assertSameVerdict(harness, previous, device, when, mask, inBatch, stampMax);
            _assertSameVerdict(harness, deviceKey(80), device, when, mask, inBatch, stampMax);
            _assertSameVerdict(harness, deviceKey(999), device, when, mask, inBatch, stampMax);
            assertLe(harness.stamp(), stampMax, "a stamp never outgrows its room");
        }
    }

    function _assertSameVerdict(
        CachedVerifierHarness harness,
        uint256 key,
        address device,
        uint64 when,
        uint256 mask,
        bool inBatch,
        uint256 stampMax
    ) internal {
        (bytes32 r, bytes32 vs) = vm.signCompact(key, harness.digest(SH));
        IDeviceEvents.RejectReason expected = harness.checkSigner(SH, r, vs, device, mask, when);
        assertEq(uint8(harness.checkSignerCached(SH, r, vs, device, mask, when)), uint8(expected), "cached verdict");
        assertEq(
            uint8(harness.checkSignerStamped(SH, r, vs, device, mask, when, inBatch, stampMax)),
            uint8(expected),
            "stamped verdict"
        );
    }

    // ---------------------------------------------------------------- the meter's key stamp

    /// @dev After the first reading, a reading signed by the meter's own key is checked against the stamp in the
    /// agreement's word: the cache entry is not read (emptied here, it stays empty) and the registry is not asked.
    function test_Stamp_ReadingsOfTheMetersOwnKeyNeedNoCacheEntry() public {
        assertEq(_settleOne(signReading(meterKey, id, 1, uint64(block.timestamp), START + 1)), 1, "stamps");
        vm.store(address(billing), keccak256(abi.encode(meter, CACHE_BASE)), bytes32(0));
        vm.expectCall(address(registry), abi.encodeCall(registry.keyInfo, (meter)), 0);
        assertEq(_settleOne(signReading(meterKey, id, 2, uint64(block.timestamp), START + 2)), 1, "settled by stamp");
        assertEq(_entry(address(billing), meter), 0, "the cache entry was not needed");
    }

    /// @dev The attack on a stamp: the meter's key was stamped, then retired; a thief holding it relays a reading
    /// dated after the retirement. The epoch moved, so the stamp is stale and the registry's verdict applies.
    function test_Stamp_DoesNotOutliveARetirement() public {
        assertEq(_settleOne(signReading(meterKey, id, 1, uint64(block.timestamp), START + 1)), 1, "stamps");
        rotate(meter, deviceKey(76), owner);
        _expectRefused(
            signReading(meterKey, id, 2, uint64(block.timestamp) + 1, START + 2), IDeviceEvents.RejectReason.KeyRotated
        );
        assertEq(billing.agreementOf(id).lastSeq, 1, "nothing settled after the retirement");
    }

    /// @dev A lone reading (no epoch read) asks the registry and keeps the stamp; a batch after it uses the stamp.
    function test_Stamp_SurvivesALoneReading() public {
        assertEq(_settleOne(signReading(meterKey, id, 1, uint64(block.timestamp), START + 1)), 1, "stamps");
        vm.prank(relayer);
        billing.settleReading(signReading(meterKey, id, 2, uint64(block.timestamp), START + 2));
        vm.store(address(billing), keccak256(abi.encode(meter, CACHE_BASE)), bytes32(0));
        assertEq(_settleOne(signReading(meterKey, id, 3, uint64(block.timestamp), START + 3)), 1, "stamp kept");
        assertEq(_entry(address(billing), meter), 0, "no cache entry needed");
    }
}

/// @dev The same cache in MotorInsurance's report path: a vehicle's key is cached when its policy is offered, a batch
/// of three or more reports checks keys through it, and a retirement stops the key in the very next transaction.
contract MotorKeyCacheTest is MotorFixture {
    bytes32 internal constant CACHE_BASE = keccak256("iotsettle.DeviceEventVerifier.keyCache");
    uint64 internal constant START = 1_000_000;

    uint256 internal vehicleKey = deviceKey(90);
    address internal vehicle;
    uint256 internal id;

    function setUp() public override {
        super.setUp();
        vehicle = registerVehicle(vehicleKey);
        id = openPolicy(vehicle, 100, 8_000, 20_000, 1_000, START, 1e18);
    }

    function _entry(address key) internal view returns (uint256) {
        return uint256(vm.load(address(motor), keccak256(abi.encode(key, CACHE_BASE))));
    }

    /// @dev The report three times in one batch (the size from which keys go through the cache); the copies after
    /// the first are refused (Replayed once it settled) and change nothing.
    function _settleThree(IMotorInsurance.SignedTelematics memory t) internal returns (uint256) {
        IMotorInsurance.SignedTelematics[] memory batch = new IMotorInsurance.SignedTelematics[](3);
        batch[0] = t;
        batch[1] = t;
        batch[2] = t;
        bytes memory packed = packReports(batch);
        vm.prank(relayer);
        return motor.settle(packed);
    }

    function _report(uint256 key, uint64 seq, uint64 timestamp, uint64 odometer)
        internal
        view
        returns (IMotorInsurance.SignedTelematics memory)
    {
        return signTelematics(key, id, seq, timestamp, odometer, 0, 0);
    }

    function _expectRefused(IMotorInsurance.SignedTelematics memory t, IDeviceEvents.RejectReason reason) internal {
        vm.expectEmit(address(motor));
        emit IMotorInsurance.TelematicsRejected(t.policyId, t.seq, reason);
        assertEq(_settleThree(t), 0, "refused");
    }

    function test_Offer_CachesTheVehiclesKey() public view {
        uint256 expected = uint256(uint160(vehicle)) | (uint256(uint8(IDeviceRegistry.DeviceKind.Vehicle)) << 160)
            | (uint256(registry.keyEpoch()) << 168);
        assertEq(_entry(vehicle), expected, "the registry's answer at its epoch, written when the policy was offered");
    }

    function test_Batch_ChecksTheKeyWithoutAskingTheRegistry() public {
        vm.expectCall(address(registry), abi.encodeCall(registry.keyInfo, (vehicle)), 0);
        assertEq(_settleThree(_report(vehicleKey, 1, uint64(block.timestamp), START + 1_000)), 1, "settled");
    }

    /// @dev Also the attack on a stamp: the first batch stamped the policy with the vehicle's key; the revocation
    /// moves the epoch, so the stamp is stale and the registry's verdict applies.
    function test_RevokedBetweenTwoBatchesInTheSameBlock_IsRefused() public {
        assertEq(_settleThree(_report(vehicleKey, 1, uint64(block.timestamp), START + 1_000)), 1, "cached and used");
        uint256 stamp = (uint256(vm.load(address(motor), _moneySlot())) >> 88) & type(uint40).max;
        assertEq(stamp, uint256(registry.keyEpoch()) + 1, "stamped");
        vm.prank(owner);
        registry.revoke(vehicle);
        // Same block, dated one second after the revocation (within the clock skew): only the key check refuses.
        _expectRefused(
            _report(vehicleKey, 2, uint64(block.timestamp) + 1, START + 2_000), IDeviceEvents.RejectReason.DeviceRevoked
        );
        assertEq(motor.policyOf(id).lastSeq, 1, "nothing settled after the revocation");
    }

    function test_RotatedBetweenTwoBatchesInTheSameBlock_OldKeyIsRefused_NewKeySettles() public {
        assertEq(_settleThree(_report(vehicleKey, 1, uint64(block.timestamp), START + 1_000)), 1);
        uint256 newKey = deviceKey(91);
        rotate(vehicle, newKey, owner);
        _expectRefused(
            _report(vehicleKey, 2, uint64(block.timestamp) + 1, START + 2_000), IDeviceEvents.RejectReason.KeyRotated
        );
        assertEq(_settleThree(_report(newKey, 2, uint64(block.timestamp) + 1, START + 2_000)), 1, "the new key");
        assertEq(_entry(vm.addr(newKey)) >> 168, registry.keyEpoch(), "the new key cached at the new epoch");
    }

    /// @dev The policy's slot 1 (deposited 0..87 | keyStamp 88..127 | seal 128..255), found by its deposit.
    function _moneySlot() internal view returns (bytes32 slot) {
        for (uint256 k = 0; k < 64; ++k) {
            slot = bytes32(uint256(keccak256(abi.encode(id, k))) + 1);
            if (uint256(vm.load(address(motor), slot)) & ((1 << 88) - 1) == 1e18) return slot;
        }
        revert("policy storage not found");
    }

    function test_Stamp_ReportsOfTheVehiclesOwnKeyNeedNoCacheEntry() public {
        assertEq(_settleThree(_report(vehicleKey, 1, uint64(block.timestamp), START + 1_000)), 1, "stamps");
        vm.store(address(motor), keccak256(abi.encode(vehicle, CACHE_BASE)), bytes32(0));
        vm.expectCall(address(registry), abi.encodeCall(registry.keyInfo, (vehicle)), 0);
        assertEq(_settleThree(_report(vehicleKey, 2, uint64(block.timestamp), START + 2_000)), 1, "settled by stamp");
        assertEq(_entry(vehicle), 0, "the cache entry was not needed");
    }

    /// @dev A retirement elsewhere moves the epoch: the next report renews the stamp in slot 1 and leaves the money
    /// in and the seal of the terms as they were.
    function test_Stamp_RenewalKeepsTheMoneyInAndTheSeal() public {
        assertEq(_settleThree(_report(vehicleKey, 1, uint64(block.timestamp), START + 1_000)), 1, "stamps");
        bytes32 slot = _moneySlot();
        uint256 before = uint256(vm.load(address(motor), slot));
        assertEq((before >> 88) & type(uint40).max, uint256(registry.keyEpoch()) + 1, "stamped at the epoch");
        address other = registerVehicle(deviceKey(93));
        vm.prank(owner);
        registry.revoke(other);
        vm.warp(block.timestamp + 60);
        assertEq(_settleThree(_report(vehicleKey, 2, uint64(block.timestamp), START + 2_000)), 1, "renews");
        uint256 after_ = uint256(vm.load(address(motor), slot));
        assertEq((after_ >> 88) & type(uint40).max, uint256(registry.keyEpoch()) + 1, "renewed at the new epoch");
        uint256 stampBits = uint256(type(uint40).max) << 88;
        assertEq(after_ & ~stampBits, before & ~stampBits, "money in and seal unchanged");
        assertEq(motor.policyOf(id).deposited, 1e18);
    }

    function test_RotatedKey_KeepsItsGraceForWhatItSignedBefore() public {
        uint64 retiredAt = uint64(block.timestamp);
        rotate(vehicle, deviceKey(92), owner);
        vm.warp(block.timestamp + 10);
        assertEq(_settleThree(_report(vehicleKey, 1, retiredAt, START + 1_000)), 1, "signed by the rotation");
        vm.warp(uint256(retiredAt) + motor.SETTLEMENT_GRACE() + 1);
        _expectRefused(_report(vehicleKey, 2, retiredAt, START + 2_000), IDeviceEvents.RejectReason.KeyRotated);
    }
}
