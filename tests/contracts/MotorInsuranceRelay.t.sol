// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ICommonErrors} from "../../contracts/interfaces/ICommonErrors.sol";
import {IDeviceEvents} from "../../contracts/interfaces/IDeviceEvents.sol";
import {IMotorInsurance} from "../../contracts/interfaces/IMotorInsurance.sol";
import {MotorFixture} from "./utils/MotorFixture.sol";

/// @dev "Relayers choose nothing": the premium of a policy and the refund at its end are the same whatever subset,
/// order and batching of the vehicle's signed reports is relayed, and whenever it is relayed within the grace.
contract MotorInsuranceRelayTest is MotorFixture {
    uint256 internal vehicleKey = deviceKey(60);
    address internal vehicle;

    uint64 internal constant START = 1_000_000;
    uint256 internal constant DEPOSIT = 1_000_000;

    function setUp() public override {
        super.setUp();
        vehicle = registerVehicle(vehicleKey);
    }

    function _sign(uint256 policyId, uint64 seq, uint64 odometer, uint32 harsh, uint32 speeding)
        internal
        view
        returns (IMotorInsurance.SignedTelematics memory)
    {
        return signTelematics(vehicleKey, policyId, seq, uint64(block.timestamp), odometer, harsh, speeding);
    }

    function _relay(IMotorInsurance.SignedTelematics memory t) internal returns (uint256 settled) {
        vm.prank(relayer);
        settled = motor.settle(packReports(oneReport(t)));
    }

    /// @dev Everything the reports of a policy have cost so far: what the insurer earned plus what is still owed.
    function _premiums(uint256 policyId) internal view returns (uint256) {
        IMotorInsurance.Policy memory p = motor.policyOf(policyId);
        return p.charged + p.arrears;
    }

    // ---------------------------------------------------------------- scenario 2: granularity

    /// @dev 100 km clean, then 1 km with 10 harsh brakings, at 1000 per km, ×1.0 … ×2.0, +0.1 per event per 100 km.
    /// Relaying both reports or only the newest (what the oracle does for a cumulative kind) costs the same:
    /// totals 101 km and 10 events = 9.9 per 100 km → ×1.99 → 201,000.
    function test_Scenario2_RelayingOnlyTheNewestReportCostsTheSameAsRelayingEvery() public {
        uint256 id = openPolicy(vehicle, 1_000, 10_000, 20_000, 1_000, START, DEPOSIT);
        IMotorInsurance.SignedTelematics memory first = _sign(id, 1, START + 100_000, 0, 0);
        IMotorInsurance.SignedTelematics memory second = _sign(id, 2, START + 101_000, 10, 0);

        uint256 snapshot = vm.snapshotState();
        assertEq(_relay(first), 1);
        assertEq(_relay(second), 1);
        uint256 everyReport = _premiums(id);

        vm.revertToState(snapshot);
        assertEq(_relay(second), 1);
        uint256 newestOnly = _premiums(id);

        emit log_named_uint("premium, every report relayed", everyReport);
        emit log_named_uint("premium, newest report only", newestOnly);
        assertEq(everyReport, newestOnly, "the premium does not depend on which reports were relayed");
        assertEq(newestOnly, 201_000, "priced on the totals: 101 km x 1000 x 1.99");
    }

    /// @dev 1 km at 5 per km × 0.8 costs 4: relayed as ten reports of 100 m (0.4 each) it still costs 4, because
    /// each report charges the growth of the rounded-down cumulative premium, so remainders carry.
    function test_Scenario2_TenReportsOfOneHundredMetresCostWhatOneKilometreCosts() public {
        uint256 id = openPolicy(vehicle, 5, 8_000, 8_000, 0, START, DEPOSIT);
        for (uint64 i = 1; i <= 10; ++i) {
            assertEq(_relay(_sign(id, i, START + i * 100, 0, 0)), 1);
        }
        emit log_named_uint("premium of 1 km relayed as 10 reports", _premiums(id));
        assertEq(_premiums(id), 4, "1 km x 5 x 0.8");
    }

    /// @dev A fuzzed honest stream of reports; the relayer picks any subset that ends with the newest report and
    /// relays it in any batching. The premium equals the one of relaying every report, one per transaction.
    function testFuzz_Scenario2_AnySubsetOfReportsCostsTheSame(
        uint32[6] memory metres,
        uint8[6] memory harsh,
        uint8[6] memory speeding,
        uint8 subset,
        uint8 batchCut
    ) public {
        uint256 id = openPolicy(vehicle, 37, 8_000, 20_000, 750, START, type(uint88).max);
        IMotorInsurance.SignedTelematics[] memory stream = new IMotorInsurance.SignedTelematics[](6);
        (uint64 odo, uint32 h, uint32 s) = (START, 0, 0);
        for (uint256 i = 0; i < 6; ++i) {
            odo += uint64(bound(metres[i], 0, 50_000));
            h += uint32(bound(harsh[i], 0, 3));
            s += uint32(bound(speeding[i], 0, 3));
            stream[i] = _sign(id, uint64(i + 1), odo, h, s);
        }

        uint256 snapshot = vm.snapshotState();
        for (uint256 i = 0; i < 6; ++i) {
            _relay(stream[i]);
        }
        uint256 honest = _premiums(id);
        vm.revertToState(snapshot);

        // The chosen reports (always the newest), split into two batches at batchCut.
        uint256 count;
        for (uint256 i = 0; i < 6; ++i) {
            if (i == 5 || (subset >> i) & 1 == 1) ++count;
        }
        IMotorInsurance.SignedTelematics[] memory chosen = new IMotorInsurance.SignedTelematics[](count);
        uint256 k;
        for (uint256 i = 0; i < 6; ++i) {
            if (i == 5 || (subset >> i) & 1 == 1) chosen[k++] = stream[i];
        }
        uint256 cut = bound(batchCut, 0, count);
        IMotorInsurance.SignedTelematics[] memory a = new IMotorInsurance.SignedTelematics[](cut);
        IMotorInsurance.SignedTelematics[] memory b = new IMotorInsurance.SignedTelematics[](count - cut);
        for (uint256 i = 0; i < count; ++i) {
            if (i < cut) a[i] = chosen[i];
            else b[i - cut] = chosen[i];
        }
        vm.startPrank(relayer);
        motor.settle(packReports(a));
        motor.settle(packReports(b));
        vm.stopPrank();
        assertEq(_premiums(id), honest, "same premium for any subset and batching");
    }

    // ---------------------------------------------------------------- scenario 5: close races

    /// @dev The holder asks to close and closes the moment the notice is over, before the relayer brings the last
    /// report, signed before the end. The report still settles, and the refund is what the driving left.
    function test_Scenario5_ReportSignedBeforeTheEndSettlesAfterARacingClose() public {
        uint256 id = openPolicy(vehicle, 100, 10_000, 10_000, 0, START, DEPOSIT);
        vm.prank(holder);
        motor.requestClose(id);
        uint64 closeAt = motor.policyOf(id).closeAt;
        vm.warp(closeAt - 10);
        IMotorInsurance.SignedTelematics memory last = _sign(id, 1, START + 500_000, 0, 0); // 500 km = 50,000

        vm.warp(closeAt);
        vm.prank(holder);
        try motor.close(id) {} catch {}
        uint256 settled = _relay(last);

        vm.warp(uint256(closeAt) + motor.SETTLEMENT_GRACE() + 1);
        try motor.close(id) {} catch {}
        uint256 refunded = token.balanceOf(holder);
        emit log_named_uint("refund to the holder", refunded);
        assertEq(settled, 1, "the report signed before the end settles");
        assertEq(refunded, DEPOSIT - 50_000, "the refund is what the driving left");
        assertEq(uint8(motor.policyOf(id).status), uint8(IMotorInsurance.PolicyStatus.Closed));
    }

    /// @dev An oracle that withholds the reports during the notice only delays them: relayed within the grace they
    /// are charged, whoever tries to close first.
    function test_Scenario5_WithheldReportsSettleDuringTheGrace() public {
        uint256 id = openPolicy(vehicle, 100, 10_000, 10_000, 0, START, DEPOSIT);
        vm.prank(insurer);
        motor.requestClose(id);
        uint64 closeAt = motor.policyOf(id).closeAt;
        IMotorInsurance.SignedTelematics memory a = _sign(id, 1, START + 100_000, 0, 0);
        vm.warp(closeAt);
        IMotorInsurance.SignedTelematics memory b = _sign(id, 2, START + 300_000, 0, 0); // signed at closeAt: in
        vm.warp(uint256(closeAt) + motor.SETTLEMENT_GRACE()); // the grace's last second;
        vm.expectRevert(
            abi.encodeWithSelector(
                ICommonErrors.TooEarly.selector, id, uint256(closeAt) + motor.SETTLEMENT_GRACE() + 1, block.timestamp
            )
        );
        motor.close(id);
        IMotorInsurance.SignedTelematics[] memory both = new IMotorInsurance.SignedTelematics[](2);
        (both[0], both[1]) = (a, b);
        vm.prank(relayer);
        assertEq(motor.settle(packReports(both)), 2, "both reports signed by the end settle");
        vm.warp(block.timestamp + 1);
        motor.close(id);
        assertEq(token.balanceOf(holder), DEPOSIT - 30_000, "300 km x 100 charged, the rest refunded");
    }

    /// @dev Review finding 5: at exactly closeAt + SETTLEMENT_GRACE a report signed by closeAt still settles and
    /// close is still early, so the order inside the block cannot decide the premium.
    function test_Review_AtTheGraceBoundaryTheReportSettlesAndCloseWaitsOneSecond() public {
        uint256 id = openPolicy(vehicle, 100, 10_000, 10_000, 0, START, DEPOSIT);
        vm.prank(holder);
        motor.requestClose(id);
        uint64 closeAt = motor.policyOf(id).closeAt;
        vm.warp(closeAt);
        IMotorInsurance.SignedTelematics memory last = _sign(id, 1, START + 500_000, 0, 0); // 500 km = 50,000
        uint256 boundary = uint256(closeAt) + motor.SETTLEMENT_GRACE();
        vm.warp(boundary);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.TooEarly.selector, id, boundary + 1, boundary));
        motor.close(id); // close first in the block: still early
        assertEq(_relay(last), 1, "the report signed at closeAt settles");
        vm.warp(boundary + 1);
        motor.close(id);
        assertEq(token.balanceOf(holder), DEPOSIT - 50_000, "the refund is what the driving left");
    }

    /// @dev A report signed after closeAt is not the policy's: refused with AfterEnd, nothing charged.
    function test_Scenario5_ReportSignedAfterTheEndIsRefused() public {
        uint256 id = openPolicy(vehicle, 100, 10_000, 10_000, 0, START, DEPOSIT);
        vm.prank(holder);
        motor.requestClose(id);
        uint64 closeAt = motor.policyOf(id).closeAt;
        vm.warp(closeAt + 1);
        IMotorInsurance.SignedTelematics memory late = _sign(id, 1, START + 100_000, 0, 0);
        vm.expectEmit(address(motor));
        emit IMotorInsurance.TelematicsRejected(id, 1, IDeviceEvents.RejectReason.AfterEnd);
        assertEq(_relay(late), 0);
        assertEq(_premiums(id), 0, "nothing charged after the end");
    }
}
