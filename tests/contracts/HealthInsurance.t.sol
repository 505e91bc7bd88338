// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IDeviceEvents} from "../../contracts/interfaces/IDeviceEvents.sol";
import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {IHealthInsurance} from "../../contracts/interfaces/IHealthInsurance.sol";
import {ICommonErrors} from "../../contracts/interfaces/ICommonErrors.sol";
import {HealthFixture} from "./utils/HealthFixture.sol";
import {SelectiveLiarToken} from "./utils/Hostile.sol";

contract HealthInsuranceTest is HealthFixture {
    uint256 internal key;
    address internal wearable;
    uint256 internal id;
    uint256 internal constant DEPOSIT = 10 * uint256(BASE_RATE);

    function setUp() public override {
        super.setUp();
        key = deviceKey(1);
        wearable = registerWearable(key);
        id = openHealthPolicy(wearable, defaultTerms(8), DEPOSIT);
    }

    function _settle(IHealthInsurance.SignedSummary memory s) internal returns (uint256) {
        vm.prank(relayer);
        return health.settle(packSummaries(one(s)));
    }

    function _expectRejected(IHealthInsurance.SignedSummary memory s, IDeviceEvents.RejectReason reason) internal {
        vm.expectEmit(true, true, true, true, address(health));
        emit IHealthInsurance.SummaryRejected(s.policyId, s.seq, reason);
        assertEq(_settle(s), 0, "nothing settled");
    }

    // ---------------------------------------------------------------- offer / accept

    function test_Offer_EncodesTheWearableInTheId() public view {
        assertEq(address(uint160(id >> 96)), wearable);
        IHealthInsurance.Policy memory p = health.policyOf(id);
        assertEq(uint8(p.status), uint8(IHealthInsurance.PolicyStatus.Active));
        assertEq(p.wearable, wearable);
        assertEq(p.terms.discountBps[3], 3_500);
        assertEq(p.terms.minSteps[2], 84_000);
        assertEq(p.deposited, DEPOSIT);
    }

    function test_RevertWhen_OfferNamesAVehicle() public {
        address vehicle = registerDevice(deviceKey(2), IDeviceRegistry.DeviceKind.Vehicle, owner);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.WrongDeviceKind.selector, vehicle));
        health.offer(holder, vehicle, address(token), defaultTerms(4));
    }

    function test_RevertWhen_DiscountsFallWithTheTier() public {
        IHealthInsurance.Terms memory t = defaultTerms(4);
        t.discountBps = [uint16(0), 2_000, 1_000, 3_000];
        vm.expectRevert(abi.encodeWithSelector(IHealthInsurance.InvalidDiscounts.selector, t.discountBps));
        health.offer(holder, wearable, address(token), t);
    }

    function test_RevertWhen_DiscountAboveTheRate() public {
        IHealthInsurance.Terms memory t = defaultTerms(4);
        t.discountBps[3] = 10_001;
        vm.expectRevert(abi.encodeWithSelector(IHealthInsurance.InvalidDiscounts.selector, t.discountBps));
        health.offer(holder, wearable, address(token), t);
    }

    function test_RevertWhen_ThresholdsFall() public {
        IHealthInsurance.Terms memory t = defaultTerms(4);
        t.minSteps = [uint32(9), 8, 10];
        vm.expectRevert(
            abi.encodeWithSelector(IHealthInsurance.InvalidThresholds.selector, t.minSteps, t.minActiveMinutes)
        );
        health.offer(holder, wearable, address(token), t);
    }

    function test_RevertWhen_TooManyPeriods() public {
        IHealthInsurance.Terms memory t = defaultTerms(1_009);
        vm.expectRevert(abi.encodeWithSelector(IHealthInsurance.InvalidPeriods.selector, PERIOD, uint32(1_009)));
        health.offer(holder, wearable, address(token), t);
    }

    function test_RevertWhen_SomeoneElseAccepts() public {
        vm.prank(insurer);
        uint256 other = health.offer(holder, wearable, address(token), defaultTerms(4));
        vm.expectRevert(abi.encodeWithSelector(IHealthInsurance.NotHolder.selector, other, relayer));
        vm.prank(relayer);
        health.accept(other, 1);
    }

    // ---------------------------------------------------------------- premium

    function test_Premium_AnUnsummarisedPeriodCostsTheBaseRateOnceOver() public {
        assertEq(health.policyOf(id).premium, 0, "nothing due in period 0");
        vm.warp(block.timestamp + PERIOD - 1);
        assertEq(health.policyOf(id).premium, 0, "period 0 not over");
        vm.warp(block.timestamp + 1);
        assertEq(health.policyOf(id).premium, BASE_RATE, "period 0 charged");
        vm.warp(block.timestamp + 100 * PERIOD);
        IHealthInsurance.Policy memory p = health.policyOf(id);
        assertEq(p.duePeriods, 8, "no more than the policy's periods");
        assertEq(p.premium, 8 * uint256(BASE_RATE));
        assertEq(p.prepaid, DEPOSIT - 8 * uint256(BASE_RATE));
    }

    function test_Settle_ASummaryGivesItsTiersDiscount() public {
        vm.warp(block.timestamp + PERIOD + 1);
        IHealthInsurance.SignedSummary memory s = summaryOf(key, id, 0, 3);
        vm.expectEmit(true, true, true, true, address(health));
        emit IHealthInsurance.SummarySettled(id, s.seq, 0, 3, 255);
        assertEq(_settle(s), 1);
        IHealthInsurance.Policy memory p = health.policyOf(id);
        assertEq(p.premium, uint256(BASE_RATE) * 6_500 / 10_000);
        assertEq(p.tierCounts[3], 1);
        (bool summarised, uint8 tier) = health.tierOf(id, 0);
        assertTrue(summarised);
        assertEq(tier, 3);
        (summarised,) = health.tierOf(id, 1);
        assertFalse(summarised);
    }

    function test_Settle_ABetterTierReplacesAWorseOneOnce() public {
        vm.warp(block.timestamp + PERIOD + 1);
        _settle(summaryOf(key, id, 0, 1));
        IHealthInsurance.SignedSummary memory better = signSummary(key, id, 9, uint64(block.timestamp), 0, 2);
        vm.expectEmit(true, true, true, true, address(health));
        emit IHealthInsurance.SummarySettled(id, 9, 0, 2, 1);
        assertEq(_settle(better), 1);
        IHealthInsurance.Policy memory p = health.policyOf(id);
        assertEq(p.tierCounts[1], 0);
        assertEq(p.tierCounts[2], 1);
        assertEq(p.premium, uint256(BASE_RATE) * 8_000 / 10_000, "one period, counted once at its best tier");
        _expectRejected(summaryOf(key, id, 0, 1), IDeviceEvents.RejectReason.Replayed);
        _expectRejected(better, IDeviceEvents.RejectReason.Replayed);
    }

    function test_Settle_RejectsWhatCannotCount() public {
        vm.warp(block.timestamp + PERIOD + 1);
        _expectRejected(summaryOf(key, id, 0, 4), IDeviceEvents.RejectReason.ValueOutOfRange);
        _expectRejected(signSummary(key, id, 1, uint64(block.timestamp), 8, 3), IDeviceEvents.RejectReason.AfterEnd);
        _expectRejected(
            signSummary(key, id, 1, uint64(block.timestamp), 1, 3), IDeviceEvents.RejectReason.TimestampInFuture
        );
        _expectRejected(
            signSummary(key, id, 1, uint64(block.timestamp) + 301, 0, 3), IDeviceEvents.RejectReason.TimestampInFuture
        );
        _expectRejected(
            signSummary(key, id, 1, uint64(block.timestamp) - 2, 0, 3), IDeviceEvents.RejectReason.TimestampTooOld
        );
        _expectRejected(summaryOf(deviceKey(7), id, 0, 3), IDeviceEvents.RejectReason.UnknownKey);
        _expectRejected(summaryOf(key, id + 1, 0, 3), IDeviceEvents.RejectReason.UnknownTarget);
        assertEq(health.policyOf(id).tierCounts[3], 0);
    }

    function test_Settle_AnOfferTakesNoSummary() public {
        vm.prank(insurer);
        uint256 offered = health.offer(holder, wearable, address(token), defaultTerms(4));
        _expectRejected(
            signSummary(key, offered, 1, uint64(block.timestamp), 0, 3), IDeviceEvents.RejectReason.NotActive
        );
    }

    function test_RevertWhen_BatchIsNotWholeItems() public {
        vm.expectRevert(abi.encodeWithSelector(IHealthInsurance.MalformedBatch.selector, uint256(116)));
        health.settle(new bytes(116));
    }

    // ---------------------------------------------------------------- close, late summaries, earnings

    function test_RevertWhen_ClosingBeforeTheEnd() public {
        uint256 end = block.timestamp + 8 * uint256(PERIOD);
        vm.warp(end - 1);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.TooEarly.selector, id, end, end - 1));
        health.close(id);
    }

    function test_Close_RefundsAndALateSummaryIsCredited() public {
        vm.warp(block.timestamp + 8 * uint256(PERIOD));
        uint256 refund = health.close(id);
        assertEq(refund, DEPOSIT - 8 * uint256(BASE_RATE));
        assertEq(token.balanceOf(holder), refund);

        vm.warp(block.timestamp + 365 days);
        vm.expectEmit(true, true, true, true, address(health));
        emit IHealthInsurance.LateDiscountCredited(id, uint256(BASE_RATE) * 3_500 / 10_000);
        assertEq(_settle(summaryOf(key, id, 7, 3)), 1);
        assertEq(health.withdrawable(address(token), holder), uint256(BASE_RATE) * 3_500 / 10_000);
        vm.prank(holder);
        health.withdraw(address(token));
        assertEq(holderNet(id), 7 * uint256(BASE_RATE) + uint256(BASE_RATE) * 6_500 / 10_000);
    }

    function test_Close_ALateDiscountPaysArrearsFirst() public {
        uint256 short = openHealthPolicy(wearable, defaultTerms(2), BASE_RATE);
        vm.warp(block.timestamp + 2 * uint256(PERIOD));
        assertEq(health.close(short), 0);
        assertEq(health.policyOf(short).arrears, BASE_RATE);
        _settle(summaryOf(key, short, 0, 3));
        assertEq(health.withdrawable(address(token), holder), 0, "the discount only lowers the arrears");
        assertEq(health.policyOf(short).arrears, BASE_RATE - uint256(BASE_RATE) * 3_500 / 10_000);
    }

    function test_Close_ARefundTheTokenRefusesBecomesACredit() public {
        SelectiveLiarToken liar = new SelectiveLiarToken();
        vm.prank(insurer);
        uint256 other = health.offer(holder, wearable, address(liar), defaultTerms(2));
        liar.mint(holder, DEPOSIT);
        vm.startPrank(holder);
        liar.approve(address(health), DEPOSIT);
        health.accept(other, DEPOSIT);
        vm.stopPrank();
        liar.setBlocked(holder, true);
        vm.warp(block.timestamp + 2 * uint256(PERIOD));
        uint256 refund = DEPOSIT - 2 * uint256(BASE_RATE);
        vm.expectEmit(true, true, true, true, address(health));
        emit IHealthInsurance.PolicyClosed(other, refund);
        assertEq(health.close(other), refund, "the close is not blocked");
        assertEq(health.withdrawable(address(liar), holder), refund);
        assertEq(health.credited(address(liar)), refund);
        liar.setBlocked(holder, false);
        vm.prank(holder);
        health.withdraw(address(liar));
        assertEq(liar.balanceOf(holder), refund);
    }

    function test_Earnings_TheInsurerTakesOnlyWhatNoSummaryCanTakeBack() public {
        vm.warp(block.timestamp + 3 * uint256(PERIOD));
        uint256 floor = 3 * (uint256(BASE_RATE) - uint256(BASE_RATE) * 3_500 / 10_000);
        vm.prank(insurer);
        assertEq(health.withdrawEarnings(id), floor);
        vm.expectRevert(abi.encodeWithSelector(IHealthInsurance.NoEarnings.selector, id));
        vm.prank(insurer);
        health.withdrawEarnings(id);
        vm.expectRevert(abi.encodeWithSelector(IHealthInsurance.NotInsurer.selector, id, holder));
        vm.prank(holder);
        health.withdrawEarnings(id);
    }

    function test_TopUp_RaisesTheDeposit() public {
        token.mint(relayer, 5);
        vm.startPrank(relayer);
        token.approve(address(health), 5);
        health.topUp(id, 5);
        vm.stopPrank();
        assertEq(health.policyOf(id).deposited, DEPOSIT + 5);
    }

    // ---------------------------------------------------------------- fuzz

    /// @dev Whatever tiers the periods get, the premium is Σ (base − discount of each tier), and the contract's
    /// balance covers the holder's refund and the insurer's earnings.
    function testFuzz_PremiumIsTheSumOfThePeriods(uint8[8] memory tiers, uint8 mask) public {
        vm.warp(block.timestamp + 8 * uint256(PERIOD));
        uint256 expected;
        uint256[4] memory price = [
            uint256(BASE_RATE),
            uint256(BASE_RATE) * 9_000 / 10_000,
            uint256(BASE_RATE) * 8_000 / 10_000,
            uint256(BASE_RATE) * 6_500 / 10_000
        ];
        IHealthInsurance.SignedSummary[] memory batch = new IHealthInsurance.SignedSummary[](8);
        uint256 n;
        for (uint32 k = 0; k < 8; ++k) {
            uint8 tier = uint8(bound(tiers[k], 0, 3));
            if ((mask >> k) & 1 == 1) {
                batch[n++] = summaryOf(key, id, k, tier);
                expected += price[tier];
            } else {
                expected += BASE_RATE;
            }
        }
        assembly ("memory-safe") {
            mstore(batch, n)
        }
        vm.prank(relayer);
        assertEq(health.settle(packSummaries(batch)), n);
        assertEq(health.policyOf(id).premium, expected);
        vm.prank(insurer);
        health.withdrawEarnings(id);
        health.close(id);
        assertEq(holderNet(id), expected);
        assertEq(token.balanceOf(address(health)), expected - health.policyOf(id).withdrawn);
    }

    function testFuzz_SettlingNeverChangesAnotherPolicy(uint8 tier) public {
        uint256 other = openHealthPolicy(wearable, defaultTerms(8), DEPOSIT);
        vm.warp(block.timestamp + PERIOD + 1);
        _settle(summaryOf(key, id, 0, uint8(bound(tier, 0, 3))));
        assertEq(health.policyOf(other).premium, BASE_RATE);
        assertEq(health.policyOf(other).tierCounts[0] + health.policyOf(other).tierCounts[3], 0);
    }
}
