// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {MotorInsurance} from "../../../contracts/MotorInsurance.sol";
import {IDeviceRegistry} from "../../../contracts/interfaces/IDeviceRegistry.sol";
import {IMotorInsurance} from "../../../contracts/interfaces/IMotorInsurance.sol";
import {Fixture} from "./Fixture.sol";
import {PackedReports} from "./PackedReports.sol";

/// @dev Adds MotorInsurance (deployed after the other products, as in production) and Telematics signing.
abstract contract MotorFixture is Fixture {
    MotorInsurance internal motor;

    address internal insurer = makeAddr("insurer");
    address internal holder = makeAddr("holder");

    function setUp() public virtual override {
        super.setUp();
        motor = new MotorInsurance(registry);
    }

    function signTelematics(
        uint256 key,
        uint256 policyId,
        uint64 seq,
        uint64 timestamp,
        uint64 odometer,
        uint32 harshBraking,
        uint32 speeding
    ) internal view returns (IMotorInsurance.SignedTelematics memory t) {
        bytes32 digest = motor.hashTelematics(policyId, seq, timestamp, odometer, harshBraking, speeding);
        (bytes32 r, bytes32 vs) = vm.signCompact(key, digest);
        t = IMotorInsurance.SignedTelematics(policyId, seq, timestamp, odometer, harshBraking, speeding, r, vs);
    }

    function oneReport(IMotorInsurance.SignedTelematics memory t)
        internal
        pure
        returns (IMotorInsurance.SignedTelematics[] memory batch)
    {
        batch = new IMotorInsurance.SignedTelematics[](1);
        batch[0] = t;
    }

    /// @dev The packed batch {MotorInsurance.settle} takes, each report with its policy's sealed terms.
    function packReports(IMotorInsurance.SignedTelematics[] memory batch) internal view returns (bytes memory) {
        return PackedReports.pack(motor, batch);
    }

    /// @dev The packed batch with the relayer's own `terms` (46 bytes) beside every report.
    function packReportsWith(IMotorInsurance.SignedTelematics[] memory batch, bytes memory terms)
        internal
        pure
        returns (bytes memory)
    {
        return PackedReports.pack(batch, terms);
    }

    /// @dev The `record` word of a {IMotorInsurance.PremiumCharged} event.
    function _record(uint64 seq, uint64 metres, uint32 harsh, uint32 speeding, uint16 factorBps)
        internal
        pure
        returns (uint256)
    {
        return PackedReports.record(seq, metres, harsh, speeding, factorBps);
    }

    function registerVehicle(uint256 key) internal returns (address) {
        return registerDevice(key, IDeviceRegistry.DeviceKind.Vehicle, owner);
    }

    /// @dev Offer (insurer) + accept (holder) with a token deposit, for a unit with no behaviour events on record;
    /// returns the policy id.
    function openPolicy(
        address vehicle,
        uint128 ratePerKm,
        uint16 minFactorBps,
        uint16 maxFactorBps,
        uint16 stepBps,
        uint64 startOdometer,
        uint256 deposit
    ) internal returns (uint256 policyId) {
        Terms memory terms = Terms(ratePerKm, minFactorBps, maxFactorBps, stepBps, startOdometer, 0, 0);
        policyId = openPolicy(vehicle, terms, deposit);
    }

    /// @dev The terms of {openPolicy} with the unit's starting registers (its counters count since installation).
    struct Terms {
        uint128 ratePerKm;
        uint16 minFactorBps;
        uint16 maxFactorBps;
        uint16 stepBps;
        uint64 startOdometer;
        uint32 startHarsh;
        uint32 startSpeeding;
    }

    /// @dev Offer (insurer) + accept (holder) with a token deposit; returns the policy id.
    function openPolicy(address vehicle, Terms memory terms, uint256 deposit) internal returns (uint256 policyId) {
        vm.prank(insurer);
        policyId = motor.offer(
            holder,
            vehicle,
            address(token),
            terms.ratePerKm,
            terms.minFactorBps,
            terms.maxFactorBps,
            terms.stepBps,
            terms.startOdometer,
            terms.startHarsh,
            terms.startSpeeding,
            1 days
        );
        token.mint(holder, deposit);
        vm.startPrank(holder);
        token.approve(address(motor), deposit);
        motor.accept(policyId, deposit, terms.startOdometer, terms.startHarsh, terms.startSpeeding);
        vm.stopPrank();
    }
}
