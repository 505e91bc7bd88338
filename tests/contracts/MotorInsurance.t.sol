// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

import {MotorInsurance} from "../../contracts/MotorInsurance.sol";
import {ICommonErrors} from "../../contracts/interfaces/ICommonErrors.sol";
import {IDeviceEvents} from "../../contracts/interfaces/IDeviceEvents.sol";
import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {IMotorInsurance} from "../../contracts/interfaces/IMotorInsurance.sol";
import {IPullPayments} from "../../contracts/interfaces/IPullPayments.sol";
import {FalseReturningToken, FeeOnTransferToken, ReentrantToken, RevertingToken} from "./utils/Hostile.sol";
import {MotorFixture} from "./utils/MotorFixture.sol";

contract MotorInsuranceTest is MotorFixture {
    uint256 internal vehicleKey = deviceKey(40);
    address internal vehicle;
    uint256 internal id;

    uint128 internal constant RATE = 100; // token units per km at factor 1.0
    uint16 internal constant MIN = 8_000; // 0.8× for clean driving
    uint16 internal constant MAX = 20_000; // 2.0× cap
    uint16 internal constant STEP = 1_000; // +0.1× per event per 100 km
    uint64 internal constant START = 1_000_000; // metres on the odometer at offer
    uint256 internal constant DEPOSIT = 100_000;

    IMotorInsurance.PolicyStatus internal constant ACTIVE = IMotorInsurance.PolicyStatus.Active;
    IMotorInsurance.PolicyStatus internal constant LAPSED = IMotorInsurance.PolicyStatus.Lapsed;

    function setUp() public override {
        super.setUp();
        vehicle = registerVehicle(vehicleKey);
        id = openPolicy(vehicle, RATE, MIN, MAX, STEP, START, DEPOSIT);
    }

    // ---------------------------------------------------------------- helpers

    function _report(uint64 seq, uint64 odometer, uint32 harsh, uint32 speeding)
        internal
        view
        returns (IMotorInsurance.SignedTelematics memory)
    {
        return signTelematics(vehicleKey, id, seq, uint64(block.timestamp), odometer, harsh, speeding);
    }

    function _settle(IMotorInsurance.SignedTelematics memory t) internal {
        vm.prank(relayer);
        assertEq(motor.settle(packReports(oneReport(t))), 1, "report settles");
    }

    function _expectCharged(
        IMotorInsurance.SignedTelematics memory t,
        uint64 metres,
        uint32 harsh,
        uint32 speeding,
        uint16 factorBps,
        uint256 amount
    ) internal {
        vm.expectEmit(address(motor));
        emit IMotorInsurance.PremiumCharged(t.policyId, _record(t.seq, metres, harsh, speeding, factorBps), amount);
        _settle(t);
    }

    function _expectRejected(IMotorInsurance.SignedTelematics memory t, IDeviceEvents.RejectReason reason) internal {
        IMotorInsurance.Policy memory before = motor.policyOf(t.policyId);
        vm.expectEmit(address(motor));
        emit IMotorInsurance.TelematicsRejected(t.policyId, t.seq, reason);
        vm.prank(relayer);
        assertEq(motor.settle(packReports(oneReport(t))), 0, "nothing settled");
        assertEq(
            keccak256(abi.encode(before)),
            keccak256(abi.encode(motor.policyOf(t.policyId))),
            "a rejection changes nothing"
        );
    }

    function _status(uint256 policyId) internal view returns (IMotorInsurance.PolicyStatus) {
        return motor.policyOf(policyId).status;
    }

    function _wrongStatus(uint256 policyId, IMotorInsurance.PolicyStatus status) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(IMotorInsurance.WrongStatus.selector, policyId, status);
    }

    function _offer(address token_) internal returns (uint256 policyId) {
        vm.prank(insurer);
        policyId = motor.offer(holder, vehicle, token_, RATE, MIN, MAX, STEP, START, 0, 0, 0);
    }

    function _topUp(uint256 policyId, uint256 amount) internal {
        token.mint(buyer, amount);
        vm.startPrank(buyer);
        token.approve(address(motor), amount);
        motor.topUp(policyId, amount);
        vm.stopPrank();
    }

    // ---------------------------------------------------------------- offer

    function test_Offer_EncodesVehicleInIdAndStoresTerms() public {
        vm.expectEmit(false, true, true, true, address(motor));
        emit IMotorInsurance.PolicyOffered(
            0, insurer, holder, vehicle, address(token), 7, 9_000, 15_000, 250, 42, 60, 500, 200
        );
        vm.prank(insurer);
        uint256 p = motor.offer(holder, vehicle, address(token), 7, 9_000, 15_000, 250, 42, 500, 200, 60);
        assertEq(address(uint160(p >> 96)), vehicle, "vehicle in the high bits");
        assertEq(uint96(p), 2, "serial counts offers");
        IMotorInsurance.Policy memory pol = motor.policyOf(p);
        assertEq(uint8(pol.status), uint8(IMotorInsurance.PolicyStatus.Offered));
        assertEq(pol.insurer, insurer);
        assertEq(pol.holder, holder);
        assertEq(pol.vehicle, vehicle);
        assertEq(pol.token, address(token));
        assertEq(pol.ratePerKm, 7);
        assertEq(pol.minFactorBps, 9_000);
        assertEq(pol.maxFactorBps, 15_000);
        assertEq(pol.stepBps, 250);
        assertEq(pol.startOdometer, 42);
        assertEq(pol.lastOdometer, 42);
        assertEq(pol.startHarsh, 500);
        assertEq(pol.startSpeeding, 200);
        assertEq(pol.lastHarsh, 500, "the harsh-braking count starts from the unit's count at the offer");
        assertEq(pol.lastSpeeding, 200, "the speeding count starts from the unit's count at the offer");
        assertEq(pol.lastFactorBps, 9_000, "the first factor is the minimum");
        assertEq(pol.noticePeriod, 60);
        assertEq(pol.prepaid, 0);
    }

    function test_RevertWhen_Offer_ZeroHolderOrToken() public {
        vm.startPrank(insurer);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.ZeroAddress.selector));
        motor.offer(address(0), vehicle, address(token), RATE, MIN, MAX, STEP, 0, 0, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.ZeroAddress.selector));
        motor.offer(holder, vehicle, address(0), RATE, MIN, MAX, STEP, 0, 0, 0, 0);
        vm.stopPrank();
    }

    function test_RevertWhen_Offer_ZeroRate() public {
        vm.expectRevert(abi.encodeWithSelector(IMotorInsurance.ZeroRate.selector));
        vm.prank(insurer);
        motor.offer(holder, vehicle, address(token), 0, MIN, MAX, STEP, 0, 0, 0, 0);
    }

    function test_RevertWhen_Offer_FactorBoundsOutOfRange() public {
        vm.startPrank(insurer);
        vm.expectRevert(abi.encodeWithSelector(IMotorInsurance.InvalidFactorBounds.selector, 0, MAX));
        motor.offer(holder, vehicle, address(token), RATE, 0, MAX, STEP, 0, 0, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(IMotorInsurance.InvalidFactorBounds.selector, 12_000, 11_999));
        motor.offer(holder, vehicle, address(token), RATE, 12_000, 11_999, STEP, 0, 0, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(IMotorInsurance.InvalidFactorBounds.selector, MIN, 50_001));
        motor.offer(holder, vehicle, address(token), RATE, MIN, 50_001, STEP, 0, 0, 0, 0);
        // the edges are allowed: a flat factor, and the 5× ceiling
        motor.offer(holder, vehicle, address(token), RATE, 50_000, 50_000, 0, 0, 0, 0, 0);
        motor.offer(holder, vehicle, address(token), RATE, 1, 1, STEP, 0, 0, 0, 0);
        vm.stopPrank();
        assertEq(motor.MAX_FACTOR_BPS(), 50_000);
    }

    function test_RevertWhen_Offer_VehicleUnknownRevokedOrNotAVehicle() public {
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.UnknownDevice.selector, relayer));
        vm.prank(insurer);
        motor.offer(holder, relayer, address(token), RATE, MIN, MAX, STEP, 0, 0, 0, 0);

        address meter = registerDevice(deviceKey(41), IDeviceRegistry.DeviceKind.Meter, owner);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.WrongDeviceKind.selector, meter));
        vm.prank(insurer);
        motor.offer(holder, meter, address(token), RATE, MIN, MAX, STEP, 0, 0, 0, 0);

        vm.prank(owner);
        registry.revoke(vehicle);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.UnknownDevice.selector, vehicle));
        vm.prank(insurer);
        motor.offer(holder, vehicle, address(token), RATE, MIN, MAX, STEP, 0, 0, 0, 0);
    }

    // ---------------------------------------------------------------- cancel, accept

    function test_CancelOffer_ByInsurerOrHolder() public {
        uint256 a = _offer(address(token));
        uint256 b = _offer(address(token));
        vm.expectEmit(address(motor));
        emit IMotorInsurance.PolicyCancelled(a);
        vm.prank(insurer);
        motor.cancelOffer(a);
        vm.prank(holder);
        motor.cancelOffer(b);
        assertEq(uint8(_status(a)), uint8(IMotorInsurance.PolicyStatus.Cancelled));
        assertEq(uint8(_status(b)), uint8(IMotorInsurance.PolicyStatus.Cancelled));
        vm.expectRevert(_wrongStatus(a, IMotorInsurance.PolicyStatus.Cancelled));
        vm.prank(holder);
        motor.accept(a, 1, START, 0, 0);
    }

    function test_RevertWhen_CancelOffer_StrangerAcceptedOrUnknown() public {
        uint256 a = _offer(address(token));
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.NotParty.selector, a, relayer));
        vm.prank(relayer);
        motor.cancelOffer(a);
        vm.expectRevert(_wrongStatus(id, ACTIVE));
        vm.prank(insurer);
        motor.cancelOffer(id);
        vm.expectRevert(abi.encodeWithSelector(IMotorInsurance.UnknownPolicy.selector, uint256(5)));
        motor.cancelOffer(5);
    }

    function test_Accept_PullsDepositAndStartsCounting() public {
        IMotorInsurance.Policy memory pol = motor.policyOf(id);
        assertEq(uint8(pol.status), uint8(ACTIVE));
        assertEq(pol.prepaid, DEPOSIT);
        assertEq(pol.deposited, DEPOSIT);
        assertEq(pol.lastTimestamp, block.timestamp, "reports from before acceptance are refused");
        assertEq(token.balanceOf(address(motor)), DEPOSIT);
        assertEq(token.balanceOf(holder), 0);
    }

    function test_RevertWhen_Accept_WrongCallerStatusOrAmount() public {
        uint256 a = _offer(address(token));
        token.mint(holder, 10);
        vm.prank(holder);
        token.approve(address(motor), 10);
        vm.expectRevert(abi.encodeWithSelector(IMotorInsurance.NotHolder.selector, a, insurer));
        vm.prank(insurer);
        motor.accept(a, 10, START, 0, 0);
        vm.startPrank(holder);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.ZeroAmount.selector));
        motor.accept(a, 0, START, 0, 0);
        uint256 tooMuch = uint256(type(uint88).max) + 1;
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.BalanceOverflow.selector, tooMuch));
        motor.accept(a, tooMuch, START, 0, 0);
        motor.accept(a, 10, START, 0, 0);
        vm.expectRevert(_wrongStatus(a, ACTIVE));
        motor.accept(a, 10, START, 0, 0);
        vm.stopPrank();
    }

    /// @dev Scenario 7b: the holder's acceptance names the starting registers it agrees to be priced from; an offer
    /// whose registers differ (an insurer counting the unit's history against the holder) is refused.
    function test_Scenario7b_AcceptanceNamesTheStartingRegisters() public {
        vm.prank(insurer);
        uint256 a = motor.offer(holder, vehicle, address(token), RATE, MIN, MAX, STEP, START - 500_000, 40, 7, 0);
        token.mint(holder, DEPOSIT);
        vm.startPrank(holder);
        token.approve(address(motor), DEPOSIT);
        vm.expectRevert(
            abi.encodeWithSelector(
                IMotorInsurance.StartRegistersMismatch.selector, a, START - 500_000, 40, 7, START, 40, 7
            )
        );
        motor.accept(a, DEPOSIT, START, 40, 7);
        vm.expectRevert(
            abi.encodeWithSelector(
                IMotorInsurance.StartRegistersMismatch.selector, a, START - 500_000, 40, 7, START - 500_000, 41, 7
            )
        );
        motor.accept(a, DEPOSIT, START - 500_000, 41, 7);
        vm.expectRevert(
            abi.encodeWithSelector(
                IMotorInsurance.StartRegistersMismatch.selector, a, START - 500_000, 40, 7, START - 500_000, 40, 0
            )
        );
        motor.accept(a, DEPOSIT, START - 500_000, 40, 0);
        assertEq(uint8(_status(a)), uint8(IMotorInsurance.PolicyStatus.Offered), "nothing accepted");
        motor.accept(a, DEPOSIT, START - 500_000, 40, 7);
        vm.stopPrank();
        assertEq(uint8(_status(a)), uint8(ACTIVE));
    }

    function test_RevertWhen_Accept_FeeOnTransferToken() public {
        FeeOnTransferToken fee = new FeeOnTransferToken();
        uint256 a = _offer(address(fee));
        fee.mint(holder, 1_000);
        vm.startPrank(holder);
        fee.approve(address(motor), 1_000);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.WrongValue.selector, 1_000, 990));
        motor.accept(a, 1_000, START, 0, 0);
        vm.stopPrank();
    }

    function test_RevertWhen_Accept_FalseReturningToken() public {
        FalseReturningToken liar = new FalseReturningToken();
        uint256 a = _offer(address(liar));
        liar.mint(holder, 1_000);
        liar.setLying(true);
        vm.startPrank(holder);
        liar.approve(address(motor), 1_000);
        vm.expectRevert(abi.encodeWithSelector(SafeERC20.SafeERC20FailedOperation.selector, address(liar)));
        motor.accept(a, 1_000, START, 0, 0);
        vm.stopPrank();
        assertEq(uint8(_status(a)), uint8(IMotorInsurance.PolicyStatus.Offered));
    }

    // ---------------------------------------------------------------- the premium formula

    function test_Settle_CleanDrivingPaysTheMinimumFactor() public {
        // 50 km × 100/km × 0.8 = 4000
        _expectCharged(_report(1, START + 50_000, 0, 0), 50_000, 0, 0, MIN, 4_000);
        IMotorInsurance.Policy memory pol = motor.policyOf(id);
        assertEq(pol.prepaid, DEPOSIT - 4_000);
        assertEq(pol.charged, 4_000);
        assertEq(pol.lastOdometer, START + 50_000);
        assertEq(pol.lastSeq, 1);
    }

    function test_Settle_EachEventPerHundredKmAddsOneStep() public {
        // 3 events over 50 km = 6 per 100 km → 0.8 + 6 × 0.1 = 1.4 → 50 × 100 × 1.4 = 7000
        _expectCharged(_report(1, START + 50_000, 2, 1), 50_000, 2, 1, 14_000, 7_000);
        // priced on the totals: 4 events in 250 km = 1.6 per 100 km → ×0.96 → 250 × 100 × 0.96 = 24_000 in all, so
        // this period (1 harsh over 200 km) costs 24_000 − 7_000
        _expectCharged(_report(2, START + 250_000, 3, 1), 200_000, 1, 0, 9_600, 17_000);
        assertEq(motor.policyOf(id).lastFactorBps, 9_600);
        assertEq(motor.policyOf(id).charged, 24_000);
    }

    function test_Settle_FactorIsCappedAtTheMaximum() public {
        // 10 events over 10 km = 100 per 100 km → 0.8 + 10 = far above 2.0 → 2.0: 10 × 100 × 2 = 2000
        _expectCharged(_report(1, START + 10_000, 6, 4), 10_000, 6, 4, MAX, 2_000);
    }

    function test_Settle_NoDistanceNoEventsKeepsTheLastFactorAndChargesNothing() public {
        _settle(_report(1, START + 50_000, 2, 1)); // factor 1.4
        _expectCharged(_report(2, START + 50_000, 2, 1), 0, 0, 0, 14_000, 0);
        assertEq(motor.policyOf(id).prepaid, DEPOSIT - 7_000);
    }

    function test_Settle_EventsWithoutDistanceAreChargedWithTheDistanceThatFollows() public {
        _expectCharged(_report(1, START, 1, 0), 0, 1, 0, MAX, 0);
        assertEq(motor.policyOf(id).lastFactorBps, MAX);
        assertEq(motor.policyOf(id).prepaid, DEPOSIT, "nothing charged without distance");
        // the event still counts: 1 event in 1 km = 100 per 100 km → capped at ×2.0: 1 × 100 × 2 = 200
        _expectCharged(_report(2, START + 1_000, 1, 0), 1_000, 0, 0, MAX, 200);
        // 1 event in 100 km → ×0.9: 100 × 100 × 0.9 = 9000 in all
        _expectCharged(_report(3, START + 100_000, 1, 0), 99_000, 0, 0, 9_000, 8_800);
    }

    function test_Settle_RoundsDownAndCarriesTheRemainder() public {
        // 1 m × 100/km × 0.8 = 0.08 → 0; the 0.08 is not lost, the totals carry it
        _expectCharged(_report(1, START + 1, 0, 0), 1, 0, 0, MIN, 0);
        // totals 700.001 km and 1 event: 100 × (700_001 × 0.8 + 1 × 0.1 × 100_000) / 1000 = 57_000.08 → 57_000
        // (the exact factor, not the one rounded to 8_142 bps); the factor shown is 8_000 + 100_000_000 / 700_001
        _expectCharged(_report(2, START + 1 + 700_000, 1, 0), 700_000, 1, 0, 8_142, 57_000);
        // 12 × 1 m more: with the first metre's, 13 × 0.08 = 1.04 above 57_000 → the last metre charges 1
        for (uint64 i = 1; i <= 12; ++i) {
            _settle(_report(2 + i, START + 1 + 700_000 + i, 1, 0));
        }
        assertEq(motor.policyOf(id).charged, 57_000 + 1, "remainders add up");
    }

    function test_Settle_LostReportLosesNothing() public {
        // seq 1 never arrives; seq 2 carries the cumulative registers, so the whole distance is charged
        _expectCharged(_report(2, START + 100_000, 1, 1), 100_000, 1, 1, 10_000, 10_000);
        _expectRejected(_report(1, START + 50_000, 0, 0), IDeviceEvents.RejectReason.Replayed);
    }

    function test_Quote_EqualsWhatSettleCharges() public {
        (uint64 metres, uint16 factor, uint256 amount) = motor.quote(id, START + 50_000, 2, 1);
        assertEq(metres, 50_000);
        assertEq(factor, 14_000);
        assertEq(amount, 7_000);
        _expectCharged(_report(1, START + 50_000, 2, 1), metres, 2, 1, factor, amount);
        vm.expectRevert(
            abi.encodeWithSelector(
                IDeviceEvents.EventRejected.selector, id, 0, IDeviceEvents.RejectReason.CounterRollback
            )
        );
        motor.quote(id, START, 2, 1);
        vm.expectRevert(abi.encodeWithSelector(IMotorInsurance.UnknownPolicy.selector, uint256(9)));
        motor.quote(9, START, 0, 0);
    }

    /// @dev The factor and premium of a first report match their defining properties: factor − min is the largest
    /// whole number of bps with (factor − min) × metres ≤ events × step × 100_000, capped at max; the amount is the
    /// largest whole number with amount × 10^7 ≤ rate × min(metres × min + events × step × 100_000, metres × max).
    function testFuzz_Settle_PremiumMatchesTheFormula(
        uint64 metres,
        uint32 harsh,
        uint32 speeding,
        uint128 rate,
        uint16 minF,
        uint16 maxF,
        uint16 step
    ) public {
        metres = uint64(bound(metres, 1, type(uint64).max - START));
        rate = uint128(bound(rate, 1, type(uint128).max));
        maxF = uint16(bound(maxF, 1, 50_000));
        minF = uint16(bound(minF, 1, maxF));
        uint256 p = openPolicy(vehicle, rate, minF, maxF, step, START, type(uint88).max);
        (uint16 factor, uint256 amount) = _settleAndDecode(p, START + metres, harsh, speeding);
        _checkFactor(factor, minF, maxF, step, metres, uint256(harsh) + speeding);
        _checkAmount(amount, metres, uint256(harsh) + speeding, rate, minF, maxF, step);

        IMotorInsurance.Policy memory pol = motor.policyOf(p);
        uint256 taken = amount < type(uint88).max ? amount : type(uint88).max;
        assertEq(pol.charged, taken, "charged what the prepaid covered");
        assertEq(pol.arrears, amount - taken, "the rest is arrears");
        assertEq(pol.lastFactorBps, factor);
    }

    function _settleAndDecode(uint256 p, uint64 odometer, uint32 harsh, uint32 speeding)
        internal
        returns (uint16 factor, uint256 amount)
    {
        vm.recordLogs();
        _settle(signTelematics(vehicleKey, p, 1, uint64(block.timestamp), odometer, harsh, speeding));
        uint256 record;
        (record, amount) = abi.decode(vm.getRecordedLogs()[0].data, (uint256, uint256));
        factor = uint16(record >> 48);
    }

    function _checkFactor(uint16 factor, uint16 minF, uint16 maxF, uint16 step, uint64 metres, uint256 events)
        internal
        pure
    {
        assertGe(factor, minF, "factor >= min");
        assertLe(factor, maxF, "factor <= max");
        uint256 extra = factor - minF;
        assertLe(extra * metres, events * step * 100_000, "factor not above the formula");
        if (factor < maxF) assertGt((extra + 1) * metres, events * step * 100_000, "factor is the largest");
    }

    /// @dev F × 10^7 = rate × min(metres × min + events × step × 100_000, metres × max); amount = floor(F).
    function _checkAmount(
        uint256 amount,
        uint64 metres,
        uint256 events,
        uint128 rate,
        uint16 minF,
        uint16 maxF,
        uint16 step
    ) internal pure {
        uint256 weighted = uint256(metres) * minF + events * step * 100_000;
        if (weighted > uint256(metres) * maxF) weighted = uint256(metres) * maxF;
        uint256 exact = weighted * rate;
        assertLe(amount * 1e7, exact, "amount not above the formula");
        assertGt((amount + 1) * 1e7, exact, "amount rounded down by less than one unit");
    }

    // ---------------------------------------------------------------- a unit with a history

    /// @dev A policy on a unit whose counters read 500 harsh-braking and 200 speeding events at the offer.
    function _openOnUnitWithHistory() internal returns (uint256 p) {
        p = openPolicy(vehicle, Terms(RATE, MIN, MAX, STEP, START, 500, 200), DEPOSIT);
    }

    function test_Settle_UnitWithHistoryPaysTheMinimumForACleanFirstPeriod() public {
        uint256 p = _openOnUnitWithHistory();
        // 50 km without a new event: the 700 events from before the offer are not this policy's: 0.8× → 4000
        _expectCharged(
            signTelematics(vehicleKey, p, 1, uint64(block.timestamp), START + 50_000, 500, 200),
            50_000,
            0,
            0,
            MIN,
            4_000
        );
        // then only the new events count
        // totals: 3 events in 100 km → ×1.1 → 100 × 100 × 1.1 = 11_000 in all, so this period costs 7000
        _expectCharged(
            signTelematics(vehicleKey, p, 2, uint64(block.timestamp), START + 100_000, 502, 201),
            50_000,
            2,
            1,
            11_000,
            7_000
        );
        IMotorInsurance.Policy memory pol = motor.policyOf(p);
        assertEq(pol.charged, 11_000);
        assertEq(pol.prepaid, DEPOSIT - 11_000);
        assertEq(pol.startHarsh, 500, "the starting counts stay on record");
        assertEq(pol.startSpeeding, 200, "the starting counts stay on record");
    }

    function test_Reject_ReportBelowTheStartCountsIsCounterRollback() public {
        uint256 p = _openOnUnitWithHistory();
        uint64 ts = uint64(block.timestamp);
        _expectRejected(
            signTelematics(vehicleKey, p, 1, ts, START + 50_000, 499, 200), IDeviceEvents.RejectReason.CounterRollback
        );
        _expectRejected(
            signTelematics(vehicleKey, p, 1, ts, START + 50_000, 500, 199), IDeviceEvents.RejectReason.CounterRollback
        );
        vm.expectRevert(
            abi.encodeWithSelector(
                IDeviceEvents.EventRejected.selector, p, 0, IDeviceEvents.RejectReason.CounterRollback
            )
        );
        motor.quote(p, START + 50_000, 0, 0);
        _settle(signTelematics(vehicleKey, p, 1, ts, START + 50_000, 500, 200)); // equal to the start is fine
    }

    /// @dev Whatever the unit's counters read at the offer, the factor of the first period is computed from the
    /// events after it and stays within the bounds.
    function testFuzz_Settle_FactorBoundsHoldFromAnyStartCounts(
        uint32 startHarsh,
        uint32 startSpeeding,
        uint32 harsh,
        uint32 speeding,
        uint64 metres,
        uint16 minF,
        uint16 maxF,
        uint16 step
    ) public {
        harsh = uint32(bound(harsh, 0, type(uint32).max - startHarsh));
        speeding = uint32(bound(speeding, 0, type(uint32).max - startSpeeding));
        metres = uint64(bound(metres, 1, type(uint64).max - START));
        maxF = uint16(bound(maxF, 1, 50_000));
        minF = uint16(bound(minF, 1, maxF));
        uint256 p =
            openPolicy(vehicle, Terms(RATE, minF, maxF, step, START, startHarsh, startSpeeding), type(uint88).max);
        (uint16 factor,) = _settleAndDecode(p, START + metres, startHarsh + harsh, startSpeeding + speeding);
        _checkFactor(factor, minF, maxF, step, metres, uint256(harsh) + speeding);
        if (harsh == 0 && speeding == 0) assertEq(factor, minF, "a clean first period pays the minimum");
    }

    // ---------------------------------------------------------------- batches and rejections

    function test_Settle_BatchSkipsBadItemsAndSettlesTheRest() public {
        IMotorInsurance.SignedTelematics[] memory batch = new IMotorInsurance.SignedTelematics[](4);
        batch[0] = _report(1, START + 10_000, 0, 0);
        batch[1] = _report(1, START + 20_000, 0, 0); // same seq again: replayed
        batch[2] = _report(2, START + 5_000, 0, 0); // odometer below the last: rollback
        batch[3] = _report(3, START + 30_000, 0, 0);
        vm.expectEmit(address(motor));
        emit IMotorInsurance.PremiumCharged(id, _record(1, 10_000, 0, 0, MIN), 800);
        vm.expectEmit(address(motor));
        emit IMotorInsurance.TelematicsRejected(id, 1, IDeviceEvents.RejectReason.Replayed);
        vm.expectEmit(address(motor));
        emit IMotorInsurance.TelematicsRejected(id, 2, IDeviceEvents.RejectReason.CounterRollback);
        vm.expectEmit(address(motor));
        emit IMotorInsurance.PremiumCharged(id, _record(3, 20_000, 0, 0, MIN), 1_600);
        vm.prank(relayer);
        assertEq(motor.settle(packReports(batch)), 2);
        assertEq(motor.policyOf(id).charged, 2_400);
    }

    function test_Settle_ReplayByASecondRelayerIsReportedAndChargedOnce() public {
        IMotorInsurance.SignedTelematics memory t = _report(1, START + 10_000, 0, 0);
        _settle(t);
        _expectRejected(t, IDeviceEvents.RejectReason.Replayed);
        assertEq(motor.policyOf(id).charged, 800);
    }

    function test_Reject_UnknownPolicy() public {
        IMotorInsurance.SignedTelematics memory t = _report(1, START + 1, 0, 0);
        t.policyId = id + 1;
        _expectRejected(t, IDeviceEvents.RejectReason.UnknownTarget);
    }

    function test_Reject_SeqNotAboveTheLast() public {
        _expectRejected(_report(0, START + 1, 0, 0), IDeviceEvents.RejectReason.Replayed);
        _settle(_report(5, START + 1, 0, 0));
        _expectRejected(_report(4, START + 2, 0, 0), IDeviceEvents.RejectReason.Replayed);
        _expectRejected(_report(5, START + 2, 0, 0), IDeviceEvents.RejectReason.Replayed);
    }

    function test_Reject_NotActive_OfferedCancelledClosed() public {
        uint256 offered = _offer(address(token));
        _expectRejected(
            signTelematics(vehicleKey, offered, 1, uint64(block.timestamp), START, 0, 0),
            IDeviceEvents.RejectReason.NotActive
        );
        vm.prank(insurer);
        motor.cancelOffer(offered);
        _expectRejected(
            signTelematics(vehicleKey, offered, 1, uint64(block.timestamp), START, 0, 0),
            IDeviceEvents.RejectReason.NotActive
        );
        vm.prank(holder);
        motor.requestClose(id);
        vm.warp(block.timestamp + 1 days + motor.SETTLEMENT_GRACE() + 1);
        motor.close(id);
        _expectRejected(_report(1, START + 1, 0, 0), IDeviceEvents.RejectReason.NotActive);
    }

    function test_Reject_CounterRollbackOfAnyRegister() public {
        _settle(_report(1, START + 10_000, 5, 5));
        _expectRejected(_report(2, START + 9_999, 5, 5), IDeviceEvents.RejectReason.CounterRollback);
        _expectRejected(_report(2, START + 20_000, 4, 5), IDeviceEvents.RejectReason.CounterRollback);
        _expectRejected(_report(2, START + 20_000, 5, 4), IDeviceEvents.RejectReason.CounterRollback);
        _expectRejected(_report(2, START - 1, 5, 5), IDeviceEvents.RejectReason.CounterRollback);
        _settle(_report(2, START + 10_000, 5, 5)); // equal registers are fine
    }

    function testFuzz_Reject_CounterRollback(uint64 odometer, uint32 harsh, uint32 speeding) public {
        _settle(_report(1, START + 10_000, 5, 5));
        odometer = uint64(bound(odometer, 0, type(uint64).max));
        bool rollback = odometer < START + 10_000 || harsh < 5 || speeding < 5;
        IMotorInsurance.SignedTelematics memory t = _report(2, odometer, harsh, speeding);
        if (rollback) {
            _expectRejected(t, IDeviceEvents.RejectReason.CounterRollback);
        } else {
            _settle(t);
            assertEq(motor.policyOf(id).lastOdometer, odometer);
        }
    }

    function test_Reject_TimestampEdges() public {
        uint64 skew = motor.MAX_CLOCK_SKEW();
        uint64 nowTs = uint64(block.timestamp);
        _expectRejected(
            signTelematics(vehicleKey, id, 1, nowTs + skew + 1, START, 0, 0),
            IDeviceEvents.RejectReason.TimestampInFuture
        );
        _settle(signTelematics(vehicleKey, id, 1, nowTs + skew, START, 0, 0));
        _expectRejected(
            signTelematics(vehicleKey, id, 2, nowTs + skew - 1, START, 0, 0), IDeviceEvents.RejectReason.TimestampTooOld
        );
        _settle(signTelematics(vehicleKey, id, 2, nowTs + skew, START, 0, 0)); // equal is fine
    }

    function test_Reject_ReportFromBeforeAcceptance() public {
        _expectRejected(
            signTelematics(vehicleKey, id, 1, uint64(block.timestamp) - 1, START + 1, 0, 0),
            IDeviceEvents.RejectReason.TimestampTooOld
        );
    }

    function test_Reject_MalleableCompactSignature() public {
        IMotorInsurance.SignedTelematics memory t = _report(1, START + 1, 0, 0);
        t.vs = bytes32((uint256(t.vs) & (1 << 255)) | (SECP256K1_N / 2 + 1));
        _expectRejected(t, IDeviceEvents.RejectReason.SignatureMalleable);
    }

    function test_Reject_GarbageSignature() public {
        IMotorInsurance.SignedTelematics memory t = _report(1, START + 1, 0, 0);
        t.r = bytes32(0);
        _expectRejected(t, IDeviceEvents.RejectReason.SignatureInvalid);
    }

    function test_Reject_TamperedFieldRecoversAnUnknownKey() public {
        IMotorInsurance.SignedTelematics memory t = _report(1, START + 100_000, 3, 0);
        t.harshBraking = 0; // the holder would like fewer events on record
        _expectRejected(t, IDeviceEvents.RejectReason.UnknownKey);
    }

    function test_Reject_UnknownKey() public {
        _expectRejected(
            signTelematics(deviceKey(99), id, 1, uint64(block.timestamp), START + 1, 0, 0),
            IDeviceEvents.RejectReason.UnknownKey
        );
    }

    function test_Reject_AnotherVehicleCannotReportForThisPolicy() public {
        uint256 otherKey = deviceKey(42);
        registerVehicle(otherKey);
        _expectRejected(
            signTelematics(otherKey, id, 1, uint64(block.timestamp), START + 1, 0, 0),
            IDeviceEvents.RejectReason.WrongDevice
        );
    }

    function test_Reject_OtherDeviceKindsAreWrongDevice() public {
        // A policy's device is a VEHICLE by construction (kinds never change), so a meter's key is another device.
        uint256 meterKey = deviceKey(43);
        registerDevice(meterKey, IDeviceRegistry.DeviceKind.Meter, owner);
        _expectRejected(
            signTelematics(meterKey, id, 1, uint64(block.timestamp), START + 1, 0, 0),
            IDeviceEvents.RejectReason.WrongDevice
        );
    }

    function test_Reject_RotatedKeyNewKeyTakesOver() public {
        uint256 newKey = deviceKey(44);
        rotate(vehicle, newKey, owner);
        // Signed after the retirement: refused (signed before, it would count for the grace).
        vm.warp(block.timestamp + 1);
        _expectRejected(_report(1, START + 1, 0, 0), IDeviceEvents.RejectReason.KeyRotated);
        _settle(signTelematics(newKey, id, 1, uint64(block.timestamp), START + 1, 0, 0));
    }

    function test_Reject_RevokedVehicle() public {
        vm.prank(owner);
        registry.revoke(vehicle);
        vm.warp(block.timestamp + 1);
        _expectRejected(_report(1, START + 1, 0, 0), IDeviceEvents.RejectReason.DeviceRevoked);
    }

    function test_Reject_AfterChainIdChange() public {
        IMotorInsurance.SignedTelematics memory t = _report(1, START + 1, 0, 0);
        vm.chainId(block.chainid + 1);
        _expectRejected(t, IDeviceEvents.RejectReason.UnknownKey);
    }

    /// @dev A report signed under any other domain (name, version, chain, verifying contract) is refused.
    function testFuzz_Reject_WrongDomain(uint8 which) public {
        which = uint8(bound(which, 0, 3));
        uint64 ts = uint64(block.timestamp);
        bytes32 sh = keccak256(
            abi.encode(motor.TELEMATICS_TYPEHASH(), id, uint64(1), ts, uint64(START + 1), uint32(0), uint32(0))
        );
        assertEq(
            digestUnder("iotsettle", "1", block.chainid, address(motor), sh),
            motor.hashTelematics(id, 1, ts, START + 1, 0, 0)
        );
        bytes32 digest = digestUnder(
            which == 0 ? "iotsettle2" : "iotsettle",
            which == 1 ? "0" : "1",
            which == 2 ? 1 : block.chainid,
            which == 3 ? address(billing) : address(motor),
            sh
        );
        (bytes32 r, bytes32 vs) = vm.signCompact(vehicleKey, digest);
        _expectRejected(
            IMotorInsurance.SignedTelematics(id, 1, ts, START + 1, 0, 0, r, vs), IDeviceEvents.RejectReason.UnknownKey
        );
    }

    function test_TypehashIsTheSpecifiedType() public view {
        assertEq(
            motor.TELEMATICS_TYPEHASH(),
            keccak256(
                "Telematics(uint256 policyId,uint64 seq,uint64 timestamp,uint64 odometer,uint32 harshBraking,uint32 speeding)"
            )
        );
    }

    // ---------------------------------------------------------------- lapse, arrears, top-up

    function test_Settle_ShortPrepaidLapsesAndRecordsArrears() public {
        // 2000 km clean = 2000 × 100 × 0.8 = 160_000 > 100_000 prepaid
        vm.expectEmit(address(motor));
        emit IMotorInsurance.PremiumCharged(id, _record(1, 2_000_000, 0, 0, MIN), 160_000);
        vm.expectEmit(address(motor));
        emit IMotorInsurance.PolicyLapsed(id, 60_000);
        _settle(_report(1, START + 2_000_000, 0, 0));
        IMotorInsurance.Policy memory pol = motor.policyOf(id);
        assertEq(uint8(pol.status), uint8(LAPSED));
        assertEq(pol.prepaid, 0);
        assertEq(pol.arrears, 60_000);
        assertEq(pol.charged, DEPOSIT, "the insurer earned the whole prepaid balance");
        assertEq(pol.lastOdometer, START + 2_000_000, "the lapsing report was settled");
        _expectRejected(_report(2, START + 2_000_001, 0, 0), IDeviceEvents.RejectReason.Suspended);
    }

    function test_Settle_LapseInABatchStopsOnlyThatPolicy() public {
        uint256 otherKey = deviceKey(45);
        uint256 other = openPolicy(registerVehicle(otherKey), RATE, MIN, MAX, STEP, START, DEPOSIT);
        IMotorInsurance.SignedTelematics[] memory batch = new IMotorInsurance.SignedTelematics[](3);
        batch[0] = _report(1, START + 2_000_000, 0, 0); // lapses this policy
        batch[1] = _report(2, START + 2_000_100, 0, 0); // refused: lapsed
        batch[2] = signTelematics(otherKey, other, 1, uint64(block.timestamp), START + 10_000, 0, 0);
        vm.expectEmit(address(motor));
        emit IMotorInsurance.PolicyLapsed(id, 60_000);
        vm.expectEmit(address(motor));
        emit IMotorInsurance.TelematicsRejected(id, 2, IDeviceEvents.RejectReason.Suspended);
        vm.expectEmit(address(motor));
        emit IMotorInsurance.PremiumCharged(other, _record(1, 10_000, 0, 0, MIN), 800);
        vm.prank(relayer);
        assertEq(motor.settle(packReports(batch)), 2);
        assertEq(motor.policyOf(other).prepaid, DEPOSIT - 800, "the other policy is charged as usual");
    }

    function test_TopUp_PaysArrearsFirstAndReinstates() public {
        _settle(_report(1, START + 2_000_000, 0, 0)); // arrears 60_000
        token.mint(buyer, 70_000);
        vm.startPrank(buyer);
        token.approve(address(motor), 70_000);
        vm.expectEmit(address(motor));
        emit IMotorInsurance.PolicyToppedUp(id, buyer, 70_000, 60_000);
        vm.expectEmit(address(motor));
        emit IMotorInsurance.PolicyReinstated(id);
        motor.topUp(id, 70_000);
        vm.stopPrank();
        IMotorInsurance.Policy memory pol = motor.policyOf(id);
        assertEq(uint8(pol.status), uint8(ACTIVE));
        assertEq(pol.arrears, 0);
        assertEq(pol.prepaid, 10_000);
        assertEq(pol.charged, 160_000, "arrears paid are earned");
        // distance driven while lapsed is charged by the next report (the registers are cumulative)
        _expectCharged(_report(2, START + 2_100_000, 0, 0), 100_000, 0, 0, MIN, 8_000);
    }

    function test_TopUp_PartialArrearsStaysLapsed() public {
        _settle(_report(1, START + 2_000_000, 0, 0)); // arrears 60_000
        _topUp(id, 59_999);
        IMotorInsurance.Policy memory pol = motor.policyOf(id);
        assertEq(uint8(pol.status), uint8(LAPSED));
        assertEq(pol.arrears, 1);
        assertEq(pol.prepaid, 0);
        _expectRejected(_report(2, START + 2_000_001, 0, 0), IDeviceEvents.RejectReason.Suspended);
        _topUp(id, 1);
        assertEq(uint8(_status(id)), uint8(ACTIVE));
        _settle(_report(2, START + 2_000_001, 0, 0));
    }

    function test_TopUp_ByAnyoneAddsToPrepaid() public {
        _topUp(id, 5);
        assertEq(motor.policyOf(id).prepaid, DEPOSIT + 5);
        assertEq(motor.policyOf(id).deposited, DEPOSIT + 5);
        assertEq(token.balanceOf(address(motor)), DEPOSIT + 5);
    }

    function test_RevertWhen_TopUp_Invalid() public {
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.ZeroAmount.selector));
        motor.topUp(id, 0);
        uint256 offered = _offer(address(token));
        vm.expectRevert(_wrongStatus(offered, IMotorInsurance.PolicyStatus.Offered));
        motor.topUp(offered, 1);
        vm.expectRevert(abi.encodeWithSelector(IMotorInsurance.UnknownPolicy.selector, uint256(3)));
        motor.topUp(3, 1);
        uint256 tooMuch = uint256(type(uint88).max) - DEPOSIT + 1;
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.BalanceOverflow.selector, tooMuch + DEPOSIT));
        motor.topUp(id, tooMuch);
    }

    // ---------------------------------------------------------------- premiums

    function test_WithdrawEarnings_PaysChargedMinusWithdrawn() public {
        _settle(_report(1, START + 50_000, 0, 0)); // 4000
        vm.expectEmit(address(motor));
        emit IMotorInsurance.EarningsWithdrawn(id, insurer, 4_000);
        vm.prank(insurer);
        assertEq(motor.withdrawEarnings(id), 4_000);
        _settle(_report(2, START + 60_000, 0, 0)); // 800
        vm.prank(insurer);
        assertEq(motor.withdrawEarnings(id), 800);
        assertEq(token.balanceOf(insurer), 4_800);
        IMotorInsurance.Policy memory pol = motor.policyOf(id);
        assertEq(pol.withdrawn, 4_800);
        assertEq(token.balanceOf(address(motor)), pol.prepaid);
    }

    function test_RevertWhen_WithdrawEarnings_NotInsurerOrNothingEarned() public {
        vm.expectRevert(abi.encodeWithSelector(IMotorInsurance.NoEarnings.selector, id));
        vm.prank(insurer);
        motor.withdrawEarnings(id);
        _settle(_report(1, START + 50_000, 0, 0));
        vm.expectRevert(abi.encodeWithSelector(IMotorInsurance.NotInsurer.selector, id, holder));
        vm.prank(holder);
        motor.withdrawEarnings(id);
    }

    function test_WithdrawEarnings_ReentrantTokenCannotReenter() public {
        ReentrantToken evil = new ReentrantToken();
        uint256 a = _offer(address(evil));
        evil.mint(holder, DEPOSIT);
        vm.startPrank(holder);
        evil.approve(address(motor), DEPOSIT);
        motor.accept(a, DEPOSIT, START, 0, 0);
        motor.requestClose(a); // notice period 0: anyone may close once the grace is over
        vm.stopPrank();
        _settle(signTelematics(vehicleKey, a, 1, uint64(block.timestamp), START + 50_000, 0, 0));
        vm.warp(block.timestamp + motor.SETTLEMENT_GRACE() + 1);
        // during the premium transfer the token tries to close the policy (permissionless): the guard refuses
        evil.arm(address(motor), abi.encodeCall(motor.close, (a)));
        vm.prank(insurer);
        motor.withdrawEarnings(a);
        assertTrue(evil.reentered());
        assertFalse(evil.reentrySucceeded(), "the guard refuses the re-entry");
        assertEq(evil.balanceOf(insurer), 4_000);
        assertEq(uint8(_status(a)), uint8(ACTIVE), "the re-entered close had no effect");
        evil.arm(address(0), "");
        motor.close(a);
        assertEq(evil.balanceOf(holder), DEPOSIT - 4_000);
        assertEq(evil.balanceOf(address(motor)), 0, "nothing left behind");
    }

    function test_TopUp_ReentrantTokenCannotReenter() public {
        ReentrantToken evil = new ReentrantToken();
        uint256 a = _offer(address(evil));
        evil.mint(holder, 2 * DEPOSIT);
        vm.startPrank(holder);
        evil.approve(address(motor), 2 * DEPOSIT);
        motor.accept(a, DEPOSIT, START, 0, 0);
        evil.arm(address(motor), abi.encodeCall(motor.topUp, (a, 1)));
        motor.topUp(a, DEPOSIT);
        vm.stopPrank();
        assertTrue(evil.reentered());
        assertFalse(evil.reentrySucceeded());
        assertEq(motor.policyOf(a).prepaid, 2 * DEPOSIT);
        assertEq(evil.balanceOf(address(motor)), 2 * DEPOSIT);
    }

    // ---------------------------------------------------------------- closing

    function test_RequestClose_ByHolderOrInsurerStartsTheNotice() public {
        vm.expectEmit(address(motor));
        emit IMotorInsurance.CloseRequested(id, uint64(block.timestamp + 1 days));
        vm.prank(insurer);
        motor.requestClose(id);
        vm.warp(block.timestamp + 1 hours);
        vm.prank(holder);
        motor.requestClose(id); // a second request keeps the first date
        assertEq(motor.policyOf(id).closeAt, block.timestamp - 1 hours + 1 days);
    }

    function test_RevertWhen_RequestClose_StrangerOrNotRunning() public {
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.NotParty.selector, id, relayer));
        vm.prank(relayer);
        motor.requestClose(id);
        uint256 offered = _offer(address(token));
        vm.expectRevert(_wrongStatus(offered, IMotorInsurance.PolicyStatus.Offered));
        vm.prank(holder);
        motor.requestClose(offered);
    }

    function test_Close_AfterNoticeRefundsTheUnusedPrepaidToTheHolder() public {
        _settle(_report(1, START + 50_000, 0, 0)); // 4000
        vm.prank(holder);
        motor.requestClose(id);
        uint64 closeAt = motor.policyOf(id).closeAt;
        vm.warp(closeAt - 1);
        _settle(_report(2, START + 60_000, 0, 0)); // reports keep settling during the notice: 800
        uint256 notBefore = closeAt + motor.SETTLEMENT_GRACE() + 1;
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.TooEarly.selector, id, notBefore, closeAt - 1));
        motor.close(id);
        vm.warp(notBefore - 1);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.TooEarly.selector, id, notBefore, notBefore - 1));
        motor.close(id);

        vm.warp(notBefore);
        vm.expectEmit(address(motor));
        emit IMotorInsurance.PolicyClosed(id, DEPOSIT - 4_800);
        vm.prank(relayer); // anyone may close
        assertEq(motor.close(id), DEPOSIT - 4_800);
        assertEq(token.balanceOf(holder), DEPOSIT - 4_800);
        IMotorInsurance.Policy memory pol = motor.policyOf(id);
        assertEq(uint8(pol.status), uint8(IMotorInsurance.PolicyStatus.Closed));
        assertEq(pol.refunded, DEPOSIT - 4_800);
        assertEq(pol.charged, 4_800, "the insurer keeps what was charged");
        vm.prank(insurer);
        motor.withdrawEarnings(id);
        assertEq(token.balanceOf(address(motor)), 0, "nothing left behind");
    }

    function test_RevertWhen_Close_NotRequestedOrTwice() public {
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.CloseNotRequested.selector, id));
        motor.close(id);
        vm.prank(holder);
        motor.requestClose(id);
        vm.warp(block.timestamp + 1 days + motor.SETTLEMENT_GRACE() + 1);
        motor.close(id);
        vm.expectRevert(_wrongStatus(id, IMotorInsurance.PolicyStatus.Closed));
        motor.close(id);
        vm.expectRevert(_wrongStatus(id, IMotorInsurance.PolicyStatus.Closed));
        vm.prank(holder);
        motor.requestClose(id);
        vm.expectRevert(_wrongStatus(id, IMotorInsurance.PolicyStatus.Closed));
        motor.topUp(id, 1);
    }

    function test_Close_LapsedPolicyKeepsArrearsOnRecord() public {
        _settle(_report(1, START + 2_000_000, 0, 0)); // arrears 60_000
        vm.prank(insurer);
        motor.requestClose(id);
        vm.warp(block.timestamp + 1 days + motor.SETTLEMENT_GRACE() + 1);
        assertEq(motor.close(id), 0, "nothing to refund");
        IMotorInsurance.Policy memory pol = motor.policyOf(id);
        assertEq(uint8(pol.status), uint8(IMotorInsurance.PolicyStatus.Closed));
        assertEq(pol.arrears, 60_000);
    }

    function test_Close_HolderThatCannotReceiveIsCreditedAndWithdrawsLater() public {
        RevertingToken rev = new RevertingToken();
        uint256 a = _offer(address(rev));
        rev.mint(holder, DEPOSIT);
        vm.startPrank(holder);
        rev.approve(address(motor), DEPOSIT);
        motor.accept(a, DEPOSIT, START, 0, 0);
        motor.requestClose(a);
        vm.stopPrank();
        rev.setBroken(true);
        vm.warp(block.timestamp + motor.SETTLEMENT_GRACE() + 1);
        vm.expectEmit(address(motor));
        emit IMotorInsurance.PolicyClosed(a, DEPOSIT);
        vm.expectEmit(address(motor));
        emit IPullPayments.Credited(address(rev), holder, DEPOSIT);
        motor.close(a); // the failed push does not keep the policy open
        assertEq(uint8(_status(a)), uint8(IMotorInsurance.PolicyStatus.Closed));
        assertEq(motor.withdrawable(address(rev), holder), DEPOSIT);
        assertEq(motor.credited(address(rev)), DEPOSIT);

        rev.setBroken(false);
        vm.expectEmit(address(motor));
        emit IPullPayments.Withdrawn(address(rev), holder, DEPOSIT);
        vm.prank(holder);
        assertEq(motor.withdraw(address(rev)), DEPOSIT);
        assertEq(rev.balanceOf(holder), DEPOSIT);
        assertEq(motor.withdrawable(address(rev), holder), 0);
        assertEq(motor.credited(address(rev)), 0);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.NothingToWithdraw.selector, address(rev), holder));
        vm.prank(holder);
        motor.withdraw(address(rev));
    }

    function test_Withdraw_ReentrantTokenIsPaidOnce() public {
        ReentrantToken evil = new ReentrantToken();
        uint256 a = _offer(address(evil));
        evil.mint(holder, DEPOSIT);
        vm.startPrank(holder);
        evil.approve(address(motor), DEPOSIT);
        motor.accept(a, DEPOSIT, START, 0, 0);
        motor.requestClose(a);
        vm.stopPrank();
        // the refund push re-enters withdraw (nothing credited yet, and the guard is held): the push still succeeds
        evil.arm(address(motor), abi.encodeCall(motor.withdraw, (address(evil))));
        vm.warp(block.timestamp + motor.SETTLEMENT_GRACE() + 1);
        motor.close(a);
        assertFalse(evil.reentrySucceeded());
        assertEq(evil.balanceOf(holder), DEPOSIT, "refunded exactly once");
        assertEq(evil.balanceOf(address(motor)), 0);
    }

    // ---------------------------------------------------------------- packed batch

    /// @dev A batch cut short (not a multiple of 174 bytes) reverts whole: no item of it settles.
    function test_Settle_MalformedBatchReverts() public {
        bytes memory packed = packReports(oneReport(_report(1, START + 1_000, 0, 0)));
        bytes memory cut = new bytes(packed.length - 1);
        for (uint256 i = 0; i < cut.length; ++i) {
            cut[i] = packed[i];
        }
        vm.expectRevert(abi.encodeWithSelector(IMotorInsurance.MalformedBatch.selector, uint256(173)));
        motor.settle(cut);
        assertEq(motor.settle(packReports(oneReport(_report(1, START + 1_000, 0, 0)))), 1, "the whole item settles");
    }

    // ---------------------------------------------------------------- terms carried by the relayer

    /// @dev Attack: the relayer sends its own terms beside a report (a rate of 1, a start odometer just below the
    /// report so almost no distance is priced, the widest factor band, no closeAt). The policy keeps the terms of
    /// the offer: the report is charged exactly as with the true terms, and the policy's state is the same.
    function test_Attack_RelayerPassesFalseTermsChargesTheTrueTerms() public {
        IMotorInsurance.SignedTelematics memory t = _report(1, START + 50_000, 2, 1);
        uint256 snap = vm.snapshotState();
        vm.expectEmit(address(motor));
        emit IMotorInsurance.PremiumCharged(id, _record(1, 50_000, 2, 1, 14_000), 7_000);
        vm.prank(relayer);
        assertEq(motor.settle(packReportsWith(oneReport(t), motor.telematicsTerms(id))), 1);
        bytes32 honest = keccak256(abi.encode(motor.policyOf(id)));

        vm.revertToState(snap);
        bytes[4] memory lies = [
            abi.encodePacked(uint128(1), _termsWord(MIN, MAX, STEP, START, 0, 0, 0)),
            abi.encodePacked(RATE, _termsWord(MIN, MAX, STEP, START + 49_999, 2, 1, 0)),
            abi.encodePacked(RATE, _termsWord(1, 1, 0, START, 0, 0, 0)),
            new bytes(46)
        ];
        for (uint256 i = 0; i < lies.length; ++i) {
            vm.revertToState(snap);
            vm.expectEmit(address(motor));
            emit IMotorInsurance.PremiumCharged(id, _record(1, 50_000, 2, 1, 14_000), 7_000);
            vm.prank(relayer);
            assertEq(motor.settle(packReportsWith(oneReport(t), lies[i])), 1, "settles on the true terms");
            assertEq(keccak256(abi.encode(motor.policyOf(id))), honest, "same policy state as with the true terms");
        }
    }

    /// @dev Attack: after a close request the relayer still sends the terms of before (no closeAt), to settle a
    /// report signed after closeAt. The sealed terms changed with the request: the old ones do not match, and the
    /// report is refused with AfterEnd as with the true terms.
    function test_Attack_RelayerPassesTermsFromBeforeTheCloseRequest() public {
        bytes memory before = motor.telematicsTerms(id);
        vm.prank(holder);
        motor.requestClose(id);
        uint64 closeAt = motor.policyOf(id).closeAt;
        assertTrue(keccak256(motor.telematicsTerms(id)) != keccak256(before), "the terms name the closeAt");
        vm.warp(closeAt + 1);
        IMotorInsurance.SignedTelematics memory late = _report(1, START + 1_000, 0, 0);
        vm.expectEmit(address(motor));
        emit IMotorInsurance.TelematicsRejected(id, 1, IDeviceEvents.RejectReason.AfterEnd);
        vm.prank(relayer);
        assertEq(motor.settle(packReportsWith(oneReport(late), before)), 0, "refused: signed after closeAt");
    }

    /// @dev The terms a relayer sends are the offer's, packed as {IMotorInsurance.telematicsTerms} documents.
    function test_TelematicsTerms_AreTheOffersTermsPacked() public {
        assertEq(motor.telematicsTerms(id), abi.encodePacked(RATE, _termsWord(MIN, MAX, STEP, START, 0, 0, 0)));
        vm.expectRevert(abi.encodeWithSelector(IMotorInsurance.UnknownPolicy.selector, uint256(7)));
        motor.telematicsTerms(7);
    }

    function _termsWord(
        uint16 minF,
        uint16 maxF,
        uint16 step,
        uint64 startOdometer,
        uint32 startHarsh,
        uint32 startSpeeding,
        uint64 closeAt
    ) internal pure returns (uint240) {
        return uint240(minF) | (uint240(maxF) << 16) | (uint240(step) << 32) | (uint240(startOdometer) << 48)
            | (uint240(startHarsh) << 112) | (uint240(startSpeeding) << 144) | (uint240(closeAt) << 176);
    }

    /// @dev The balances are derived from the premiums owed (floor F of the last totals) and the money in: they add
    /// up after a charge, a lapse, a partial and a full top-up.
    function test_DerivedBalances_AddUpThroughLapseAndTopUps() public {
        // 1,000 km clean at 0.8x, 100 per km: 80,000 of the 100,000 deposit.
        _settle(_report(1, START + 1_000_000, 0, 0));
        IMotorInsurance.Policy memory pol = motor.policyOf(id);
        assertEq(pol.prepaid, 20_000);
        assertEq(pol.charged, 80_000);
        // 500 km more: 40,000 owed beyond the 20,000 left -> arrears 20,000, lapsed.
        _settle(_report(2, START + 1_500_000, 0, 0));
        pol = motor.policyOf(id);
        assertEq(uint8(pol.status), uint8(LAPSED));
        assertEq(pol.prepaid, 0);
        assertEq(pol.arrears, 20_000);
        assertEq(pol.charged + pol.prepaid + pol.refunded, pol.deposited);
        token.mint(holder, 30_000);
        vm.startPrank(holder);
        token.approve(address(motor), 30_000);
        motor.topUp(id, 5_000);
        assertEq(uint8(motor.policyOf(id).status), uint8(LAPSED), "arrears left: still lapsed");
        assertEq(motor.policyOf(id).arrears, 15_000);
        motor.topUp(id, 25_000);
        vm.stopPrank();
        pol = motor.policyOf(id);
        assertEq(uint8(pol.status), uint8(ACTIVE));
        assertEq(pol.arrears, 0);
        assertEq(pol.prepaid, 10_000);
        assertEq(pol.charged, 120_000);
    }

    // ---------------------------------------------------------------- extremes and gas

    /// @dev The largest registers and terms neither overflow nor revert the batch: the premium is computed in
    /// 256 bits and whatever the prepaid balance cannot cover becomes arrears.
    function test_Settle_ExtremeValuesDoNotOverflow() public {
        uint256 p = openPolicy(vehicle, type(uint128).max, 50_000, 50_000, type(uint16).max, 0, type(uint88).max);
        IMotorInsurance.SignedTelematics memory t = signTelematics(
            vehicleKey,
            p,
            type(uint64).max,
            uint64(block.timestamp),
            type(uint64).max,
            type(uint32).max,
            type(uint32).max
        );
        uint256 amount = uint256(type(uint64).max) * type(uint128).max * 50_000 / 1e7;
        vm.expectEmit(address(motor));
        emit IMotorInsurance.PremiumCharged(
            p, _record(type(uint64).max, type(uint64).max, type(uint32).max, type(uint32).max, 50_000), amount
        );
        _settle(t);
        IMotorInsurance.Policy memory pol = motor.policyOf(p);
        assertEq(pol.arrears, amount - type(uint88).max);
        assertEq(uint8(pol.status), uint8(LAPSED));
    }

    /// @dev Gas per report as a relayer pays it (21,000 base + calldata + execution), with the contracts' storage
    /// cold as at the start of a real transaction; each report moves a different policy (the oracle's usual batch).
    function test_Gas_SettlePerReport() public {
        uint256[3] memory sizes = [uint256(1), 10, 100];
        for (uint256 s = 0; s < sizes.length; ++s) {
            uint256 n = sizes[s];
            IMotorInsurance.SignedTelematics[] memory batch = new IMotorInsurance.SignedTelematics[](n);
            for (uint256 i = 0; i < n; ++i) {
                uint256 key = deviceKey(1_000 + s * 1_000 + i);
                uint256 p = openPolicy(registerVehicle(key), RATE, MIN, MAX, STEP, START, DEPOSIT);
                batch[i] = signTelematics(key, p, 1, uint64(block.timestamp), START + 12_345 + uint64(i), 1, 0);
            }
            bytes memory packed = packReports(batch); // before cooling: the terms view reads the policies
            bytes memory data = abi.encodeCall(motor.settle, (packed));
            vm.cool(address(motor));
            vm.cool(address(registry));
            vm.prank(relayer);
            assertEq(motor.settle(packed), n);
            uint256 txGas = 21_000 + calldataGas(data) + vm.lastCallGas().gasTotalUsed;
            emit log_named_uint(string.concat("settle: tx gas per report, batch of ", vm.toString(n)), txGas / n);
            assertLt(txGas / n, 60_000, "per-report gas stays bounded");
        }
    }

    /// @dev Attacker review: a holder who owns the telematics unit revoked it after driving, so the 1,000 km report
    /// signed an hour into the notice was DeviceRevoked and the holder closed with the whole deposit (insurer
    /// charged 0). A key retired after the report's timestamp still counts for SETTLEMENT_GRACE.
    function test_Review_HolderOwningTheUnitRevokesAndErasesSignedDriving() public {
        uint256 key = deviceKey(900);
        address vehicle = registerDevice(key, IDeviceRegistry.DeviceKind.Vehicle, holder);
        // 100 per km, flat factor 1.0: 1,000 km cost 100,000.
        uint256 id = openPolicy(vehicle, 100, 10_000, 10_000, 0, 0, 1_000_000);
        vm.prank(holder);
        motor.requestClose(id);
        uint64 closeAt = motor.policyOf(id).closeAt;

        vm.warp(block.timestamp + 1 hours);
        IMotorInsurance.SignedTelematics memory rep =
            signTelematics(key, id, 1, uint64(block.timestamp), 1_000_000, 0, 0);
        (,, uint256 honest) = motor.quote(id, 1_000_000, 0, 0);
        assertEq(honest, 100_000, "honest premium");

        vm.prank(holder);
        registry.revoke(vehicle);
        vm.prank(relayer);
        assertEq(motor.settle(packReports(oneReport(rep))), 1, "report signed before the revocation settles");

        vm.warp(uint256(closeAt) + motor.SETTLEMENT_GRACE() + 1);
        uint256 refund = motor.close(id);
        assertEq(motor.policyOf(id).charged, 100_000, "the insurer is paid for the signed kilometres");
        assertEq(refund, 900_000, "the holder gets back only the unused deposit");
    }

    function test_Review_RotationAlsoErasesSignedDriving() public {
        uint256 key = deviceKey(901);
        address vehicle = registerDevice(key, IDeviceRegistry.DeviceKind.Vehicle, holder);
        uint256 id = openPolicy(vehicle, 100, 10_000, 10_000, 0, 0, 1_000_000);
        vm.warp(block.timestamp + 1 hours);
        IMotorInsurance.SignedTelematics memory rep =
            signTelematics(key, id, 1, uint64(block.timestamp), 1_000_000, 0, 0);
        rotate(vehicle, deviceKey(902), holder);
        vm.warp(block.timestamp + motor.SETTLEMENT_GRACE());
        assertEq(
            motor.settle(packReports(oneReport(rep))),
            1,
            "report signed by the then-current key settles within the grace"
        );
        assertEq(motor.policyOf(id).charged, 100_000);
    }

    /// @dev The bound of the retired-key window: a report the old key signs after the rotation, or one relayed
    /// after the grace, is refused.
    function test_Review_RetiredKeyWindowIsBounded() public {
        uint256 key = deviceKey(903);
        address vehicle = registerDevice(key, IDeviceRegistry.DeviceKind.Vehicle, holder);
        uint256 id = openPolicy(vehicle, 100, 10_000, 10_000, 0, 0, 1_000_000);
        vm.warp(vm.getBlockTimestamp() + 1 hours);
        IMotorInsurance.SignedTelematics memory before =
            signTelematics(key, id, 1, uint64(vm.getBlockTimestamp()), 1_000, 0, 0);
        rotate(vehicle, deviceKey(904), holder);
        vm.warp(vm.getBlockTimestamp() + 1);
        IMotorInsurance.SignedTelematics memory later = signTelematics(key, id, 1, uint64(vm.getBlockTimestamp()), 2_000, 0, 0);
        assertEq(motor.settle(packReports(oneReport(later))), 0, "signed after the rotation");
        vm.warp(vm.getBlockTimestamp() + motor.SETTLEMENT_GRACE());
        assertEq(motor.settle(packReports(oneReport(before))), 0, "relayed after the grace");
        assertEq(motor.policyOf(id).charged, 0);
    }
}
