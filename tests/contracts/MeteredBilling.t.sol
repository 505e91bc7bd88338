// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

import {MeteredBilling} from "../../contracts/MeteredBilling.sol";
import {ICommonErrors} from "../../contracts/interfaces/ICommonErrors.sol";
import {IDeviceEvents} from "../../contracts/interfaces/IDeviceEvents.sol";
import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {IMeteredBilling} from "../../contracts/interfaces/IMeteredBilling.sol";
import {IPullPayments} from "../../contracts/interfaces/IPullPayments.sol";
import {IWithdrawalGuard} from "../../contracts/interfaces/IWithdrawalGuard.sol";
import {WithdrawalGuard} from "../../contracts/WithdrawalGuard.sol";
import {Fixture} from "./utils/Fixture.sol";
import {FalseReturningToken, FeeOnTransferToken, Payee, ReentrantToken} from "./utils/Hostile.sol";

contract MeteredBillingTest is Fixture {
    uint256 internal meterKey = deviceKey(10);
    address internal meter;
    uint32 internal tariff;
    uint256 internal id;
    uint64 internal constant START = 100;
    uint128 internal constant PRICE = 3;
    uint256 internal constant DEPOSIT = 1_000;

    IDeviceEvents.RejectReason internal constant NONE = IDeviceEvents.RejectReason.None;

    function setUp() public override {
        super.setUp();
        meter = registerDevice(meterKey, IDeviceRegistry.DeviceKind.Meter, owner);
        tariff = flatTariff(PRICE);
        id = openAgreement(meter, tariff, START, DEPOSIT);
    }

    function _reading(uint64 seq, uint256 value) internal view returns (IMeteredBilling.SignedReading memory) {
        return signReading(meterKey, id, seq, uint64(vm.getBlockTimestamp()), value);
    }

    function _expectRejected(IMeteredBilling.SignedReading memory rd, IDeviceEvents.RejectReason reason) internal {
        IMeteredBilling.Agreement memory before = billing.agreementOf(rd.agreementId);
        // The packed batch cannot carry fields beyond the stored widths: those are refused by settleReading alone.
        if (packable(rd)) {
            vm.expectEmit(address(billing));
            emit IMeteredBilling.ReadingRejected(rd.agreementId, rd.seq, reason);
            vm.prank(relayer);
            assertEq(billing.settle(oneReading(rd)), 0, "nothing settled");
        }
        IMeteredBilling.Agreement memory after_ = billing.agreementOf(rd.agreementId);
        assertEq(keccak256(abi.encode(before)), keccak256(abi.encode(after_)), "a rejected reading changes nothing");

        vm.expectRevert(abi.encodeWithSelector(IDeviceEvents.EventRejected.selector, rd.agreementId, rd.seq, reason));
        billing.settleReading(rd);
    }

    function _settle(IMeteredBilling.SignedReading memory rd) internal {
        vm.prank(relayer);
        assertEq(billing.settle(oneReading(rd)), 1, "reading settles");
    }

    // ---------------------------------------------------------------- tariffs

    function test_CreateTariff_StoresBlocks() public {
        IMeteredBilling.TariffBlock[] memory blocks = new IMeteredBilling.TariffBlock[](3);
        blocks[0] = IMeteredBilling.TariffBlock(100, 5);
        blocks[1] = IMeteredBilling.TariffBlock(200, 4);
        blocks[2] = IMeteredBilling.TariffBlock(0, 3);
        vm.expectEmit(address(billing));
        emit IMeteredBilling.TariffCreated(tariff + 1, address(this), blocks);
        uint32 t = billing.createTariff(blocks);
        IMeteredBilling.TariffBlock[] memory stored = billing.tariffOf(t);
        assertEq(stored.length, 3);
        assertEq(stored[1].units, 200);
        assertEq(stored[1].price, 4);
        // 50 units at 5 + 200 at 4 + 50 at 3, counted from 50 to 350
        assertEq(billing.costOf(t, 50, 350), 50 * 5 + 200 * 4 + 50 * 3);
        assertEq(billing.costOf(t, 350, 50), 0);
    }

    function test_RevertWhen_CreateTariff_Invalid() public {
        IMeteredBilling.TariffBlock[] memory blocks = new IMeteredBilling.TariffBlock[](0);
        vm.expectRevert(abi.encodeWithSelector(IMeteredBilling.InvalidTariff.selector));
        billing.createTariff(blocks);

        blocks = new IMeteredBilling.TariffBlock[](1);
        blocks[0] = IMeteredBilling.TariffBlock(10, 1); // last block must be unbounded
        vm.expectRevert(abi.encodeWithSelector(IMeteredBilling.InvalidTariff.selector));
        billing.createTariff(blocks);

        blocks = new IMeteredBilling.TariffBlock[](2);
        blocks[0] = IMeteredBilling.TariffBlock(0, 1); // only the last block may be unbounded
        blocks[1] = IMeteredBilling.TariffBlock(0, 2);
        vm.expectRevert(abi.encodeWithSelector(IMeteredBilling.InvalidTariff.selector));
        billing.createTariff(blocks);

        blocks = new IMeteredBilling.TariffBlock[](9);
        for (uint256 i = 0; i < 8; ++i) {
            blocks[i] = IMeteredBilling.TariffBlock(1, 1);
        }
        vm.expectRevert(abi.encodeWithSelector(IMeteredBilling.InvalidTariff.selector));
        billing.createTariff(blocks);
    }

    function test_RevertWhen_CostOf_UnknownTariff() public {
        vm.expectRevert(abi.encodeWithSelector(IMeteredBilling.UnknownTariff.selector, uint32(77)));
        billing.costOf(77, 0, 1);
    }

    /// @dev The tiered price equals a unit-by-unit reference for any interval.
    function testFuzz_CostOf_MatchesUnitByUnit(uint64 a, uint64 b, uint64 from, uint64 span) public {
        a = uint64(bound(a, 1, 50));
        b = uint64(bound(b, 1, 50));
        from = uint64(bound(from, 0, 150));
        span = uint64(bound(span, 0, 150));
        IMeteredBilling.TariffBlock[] memory blocks = new IMeteredBilling.TariffBlock[](3);
        blocks[0] = IMeteredBilling.TariffBlock(a, 7);
        blocks[1] = IMeteredBilling.TariffBlock(b, 5);
        blocks[2] = IMeteredBilling.TariffBlock(0, 2);
        uint32 t = billing.createTariff(blocks);
        uint256 expected;
        for (uint256 u = from; u < from + span; ++u) {
            expected += u < a ? 7 : u < a + b ? 5 : 2;
        }
        assertEq(billing.costOf(t, from, from + span), expected);
    }

    // ---------------------------------------------------------------- offer, accept, cancel

    function test_Offer_EncodesDeviceAndTariffInId() public {
        vm.prank(provider);
        vm.expectEmit(false, true, true, true, address(billing));
        emit IMeteredBilling.AgreementOffered(0, provider, consumer, meter, address(token), tariff, 5, 60);
        uint256 newId = billing.offer(consumer, meter, tariff, address(token), 5, 60);
        assertEq(address(uint160(newId >> 96)), meter);
        assertEq(uint32(newId >> 64), tariff);
        IMeteredBilling.Agreement memory a = billing.agreementOf(newId);
        assertEq(uint8(a.status), uint8(IMeteredBilling.AgreementStatus.Offered));
        assertEq(a.provider, provider);
        assertEq(a.consumer, consumer);
        assertEq(a.device, meter);
        assertEq(a.tariffId, tariff);
        assertEq(a.startValue, 5);
        assertEq(a.noticePeriod, 60);
    }

    function test_Offer_VehicleIsAccepted() public {
        address vehicle = registerDevice(deviceKey(11), IDeviceRegistry.DeviceKind.Vehicle, owner);
        vm.prank(provider);
        billing.offer(consumer, vehicle, tariff, address(token), 0, 0);
    }

    function test_RevertWhen_Offer_BadParties() public {
        vm.startPrank(provider);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.ZeroAddress.selector));
        billing.offer(address(0), meter, tariff, address(token), 0, 0);
        vm.expectRevert(abi.encodeWithSelector(IMeteredBilling.UnknownTariff.selector, uint32(99)));
        billing.offer(consumer, meter, 99, address(token), 0, 0);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.UnknownDevice.selector, relayer));
        billing.offer(consumer, relayer, tariff, address(token), 0, 0);
        vm.stopPrank();

        address tracker = registerDevice(deviceKey(12), IDeviceRegistry.DeviceKind.Tracker, owner);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.WrongDeviceKind.selector, tracker));
        vm.prank(provider);
        billing.offer(consumer, tracker, tariff, address(token), 0, 0);

        vm.prank(owner);
        registry.revoke(meter);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.UnknownDevice.selector, meter));
        vm.prank(provider);
        billing.offer(consumer, meter, tariff, address(token), 0, 0);
    }

    function test_CancelOffer_ByEitherParty() public {
        vm.prank(provider);
        uint256 a = billing.offer(consumer, meter, tariff, address(token), 0, 0);
        vm.prank(provider);
        uint256 b = billing.offer(consumer, meter, tariff, address(token), 0, 0);
        vm.expectEmit(address(billing));
        emit IMeteredBilling.OfferCancelled(a, provider);
        vm.prank(provider);
        billing.cancelOffer(a);
        vm.prank(consumer);
        billing.cancelOffer(b);
        assertEq(uint8(billing.agreementOf(b).status), uint8(IMeteredBilling.AgreementStatus.Cancelled));

        vm.expectRevert(
            abi.encodeWithSelector(IMeteredBilling.WrongStatus.selector, a, IMeteredBilling.AgreementStatus.Cancelled)
        );
        vm.prank(consumer);
        billing.accept(a, 1, 0);
    }

    function test_RevertWhen_CancelOffer_StrangerOrAccepted() public {
        vm.expectRevert(abi.encodeWithSelector(IMeteredBilling.NotProvider.selector, id, relayer));
        vm.prank(relayer);
        billing.cancelOffer(id);
        vm.expectRevert(
            abi.encodeWithSelector(IMeteredBilling.WrongStatus.selector, id, IMeteredBilling.AgreementStatus.Active)
        );
        vm.prank(provider);
        billing.cancelOffer(id);
        vm.expectRevert(abi.encodeWithSelector(IMeteredBilling.UnknownAgreement.selector, uint256(5)));
        billing.cancelOffer(5);
    }

    function test_Accept_TakesDepositAndStartsAtStartValue() public view {
        IMeteredBilling.Agreement memory a = billing.agreementOf(id);
        assertEq(uint8(a.status), uint8(IMeteredBilling.AgreementStatus.Active));
        assertEq(a.prepaid, DEPOSIT);
        assertEq(a.deposited, DEPOSIT);
        assertEq(a.lastValue, START);
        assertEq(a.lastTimestamp, block.timestamp);
        assertEq(token.balanceOf(address(billing)), DEPOSIT);
    }

    function test_RevertWhen_Accept_WrongCallerOrAmounts() public {
        vm.prank(provider);
        uint256 a = billing.offer(consumer, meter, tariff, address(token), 0, 0);
        vm.expectRevert(abi.encodeWithSelector(IMeteredBilling.NotConsumer.selector, a, provider));
        vm.prank(provider);
        billing.accept(a, 1, 0);
        vm.startPrank(consumer);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.ZeroAmount.selector));
        billing.accept(a, 0, 0);
        uint256 tooBig = uint256(type(uint80).max) + 1;
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.BalanceOverflow.selector, tooBig));
        billing.accept(a, tooBig, 0);
        vm.deal(consumer, 1 ether);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.WrongValue.selector, 0, 1));
        billing.accept{value: 1}(a, 1, 0);
        vm.stopPrank();
    }

    function test_Accept_Ether() public {
        vm.prank(provider);
        uint256 a = billing.offer(consumer, meter, tariff, address(0), START, 0);
        vm.deal(consumer, 10 ether);
        vm.startPrank(consumer);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.WrongValue.selector, 1 ether, 0.5 ether));
        billing.accept{value: 0.5 ether}(a, 1 ether, START);
        billing.accept{value: 1 ether}(a, 1 ether, START);
        vm.stopPrank();
        assertEq(address(billing).balance, 1 ether);
        assertEq(billing.agreementOf(a).prepaid, 1 ether);
    }

    function test_RevertWhen_Accept_FeeOnTransferToken() public {
        FeeOnTransferToken fee = new FeeOnTransferToken();
        vm.prank(provider);
        uint256 a = billing.offer(consumer, meter, tariff, address(fee), 0, 0);
        fee.mint(consumer, 1000);
        vm.startPrank(consumer);
        fee.approve(address(billing), 1000);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.WrongValue.selector, 1000, 990));
        billing.accept(a, 1000, 0);
        vm.stopPrank();
    }

    function test_RevertWhen_Accept_FalseReturningToken() public {
        FalseReturningToken liar = new FalseReturningToken();
        vm.prank(provider);
        uint256 a = billing.offer(consumer, meter, tariff, address(liar), 0, 0);
        liar.mint(consumer, 1000);
        liar.setLying(true);
        vm.startPrank(consumer);
        liar.approve(address(billing), 1000);
        vm.expectRevert(abi.encodeWithSelector(SafeERC20.SafeERC20FailedOperation.selector, address(liar)));
        billing.accept(a, 1000, 0);
        vm.stopPrank();
        assertEq(uint8(billing.agreementOf(a).status), uint8(IMeteredBilling.AgreementStatus.Offered));
    }

    // ---------------------------------------------------------------- settle

    function test_Settle_BillsDeltaOfCumulativeRegister() public {
        vm.expectEmit(address(billing));
        emit IMeteredBilling.ReadingsSettled(settledRecord(id, 1, 30));
        _settle(_reading(1, START + 10));
        vm.warp(block.timestamp + 60);
        _settle(_reading(5, START + 25)); // seq may skip: intermediate readings need not go on-chain
        IMeteredBilling.Agreement memory a = billing.agreementOf(id);
        assertEq(a.prepaid, DEPOSIT - 75);
        assertEq(a.lastValue, START + 25);
        assertEq(a.lastSeq, 5);
        assertEq(a.lastTimestamp, block.timestamp);
        assertEq(billing.earningsOf(id), 75);
    }

    function test_Settle_EqualValueBillsNothing() public {
        _settle(_reading(1, START));
        assertEq(billing.agreementOf(id).prepaid, DEPOSIT);
        assertEq(billing.agreementOf(id).lastSeq, 1);
    }

    function test_Settle_BatchSkipsBadItemsAndSettlesTheRest() public {
        uint256 otherKey = deviceKey(20);
        address other = registerDevice(otherKey, IDeviceRegistry.DeviceKind.Meter, owner);
        uint256 id2 = openAgreement(other, tariff, 0, DEPOSIT);
        IMeteredBilling.SignedReading[] memory batch = new IMeteredBilling.SignedReading[](4);
        batch[0] = _reading(1, START + 1);
        batch[1] = _reading(1, START + 1); // duplicate in the same batch
        batch[2] = signReading(meterKey, id2, 1, uint64(block.timestamp), 5); // signed by the wrong meter
        batch[3] = signReading(otherKey, id2, 1, uint64(block.timestamp), 5);
        vm.expectEmit(address(billing));
        emit IMeteredBilling.ReadingRejected(id, 1, IDeviceEvents.RejectReason.Replayed);
        vm.expectEmit(address(billing));
        emit IMeteredBilling.ReadingRejected(id2, 1, IDeviceEvents.RejectReason.WrongDevice);
        // One log for the batch, the settled readings' records in batch order.
        vm.expectEmit(address(billing));
        emit IMeteredBilling.ReadingsSettled(bytes.concat(settledRecord(id, 1, 3), settledRecord(id2, 1, 15)));
        vm.prank(relayer);
        assertEq(billing.settle(packReadings(batch)), 2);
        assertEq(billing.agreementOf(id).prepaid, DEPOSIT - 3);
        assertEq(billing.agreementOf(id2).prepaid, DEPOSIT - 15);
    }

    function test_Settle_ReplayByASecondRelayerIsReportedAndPaidOnce() public {
        IMeteredBilling.SignedReading memory rd = _reading(1, START + 10);
        _settle(rd);
        vm.expectEmit(address(billing));
        emit IMeteredBilling.ReadingRejected(id, 1, IDeviceEvents.RejectReason.Replayed);
        vm.prank(makeAddr("second relayer"));
        assertEq(billing.settle(oneReading(rd)), 0);
        assertEq(billing.agreementOf(id).prepaid, DEPOSIT - 30);
    }

    function test_Reject_UnknownAgreement() public {
        _expectRejected(
            signReading(meterKey, id + 1, 1, uint64(block.timestamp), 1), IDeviceEvents.RejectReason.UnknownTarget
        );
    }

    function test_Reject_OlderSeq() public {
        _settle(_reading(7, START + 1));
        _expectRejected(_reading(6, START + 2), IDeviceEvents.RejectReason.Replayed);
        _expectRejected(_reading(7, START + 2), IDeviceEvents.RejectReason.Replayed);
    }

    function test_Reject_SeqZeroNeverSettles() public {
        _expectRejected(_reading(0, START + 1), IDeviceEvents.RejectReason.Replayed);
    }

    function test_Reject_NotActive() public {
        vm.prank(provider);
        uint256 offered = billing.offer(consumer, meter, tariff, address(token), 0, 0);
        _expectRejected(
            signReading(meterKey, offered, 1, uint64(block.timestamp), 1), IDeviceEvents.RejectReason.NotActive
        );
    }

    function test_Reject_CounterRollback() public {
        _expectRejected(_reading(1, START - 1), IDeviceEvents.RejectReason.CounterRollback);
    }

    function testFuzz_Reject_CounterRollback(uint64 last, uint64 next) public {
        last = uint64(bound(last, START + 1, type(uint64).max));
        next = uint64(bound(next, 0, last - 1));
        _settle(_reading(1, last)); // may run the deposit dry and suspend: the register moves either way
        IMeteredBilling.SignedReading memory rd = _reading(2, next);
        vm.prank(relayer);
        assertEq(billing.settle(oneReading(rd)), 0);
        assertEq(billing.agreementOf(id).lastValue, last, "a lower register never settles");
    }

    function test_Reject_ValueOutOfRange() public {
        _expectRejected(_reading(1, uint256(type(uint64).max) + 1), IDeviceEvents.RejectReason.ValueOutOfRange);
        _expectRejected(_reading(uint64(type(uint40).max) + 1, START), IDeviceEvents.RejectReason.ValueOutOfRange);
    }

    function test_Settle_UintEdges() public {
        _settle(_reading(type(uint40).max, START));
        assertEq(billing.agreementOf(id).lastSeq, type(uint40).max);
        vm.prank(provider);
        uint256 b = billing.offer(consumer, meter, tariff, address(token), type(uint64).max - 1, 0);
        token.mint(consumer, 10);
        vm.startPrank(consumer);
        token.approve(address(billing), 10);
        billing.accept(b, 10, type(uint64).max - 1);
        vm.stopPrank();
        _settle(signReading(meterKey, b, 1, uint64(block.timestamp), type(uint64).max));
        assertEq(billing.agreementOf(b).prepaid, 10 - PRICE);
    }

    function test_Reject_TimestampEdges() public {
        uint64 skew = billing.MAX_CLOCK_SKEW();
        _expectRejected(
            signReading(meterKey, id, 1, uint64(block.timestamp) + skew + 1, START),
            IDeviceEvents.RejectReason.TimestampInFuture
        );
        _settle(signReading(meterKey, id, 1, uint64(block.timestamp) + skew, START));
        _expectRejected(
            signReading(meterKey, id, 2, uint64(block.timestamp) + skew - 1, START),
            IDeviceEvents.RejectReason.TimestampTooOld
        );
        _settle(signReading(meterKey, id, 2, uint64(block.timestamp) + skew, START)); // equal is fine
    }

    function test_Reject_ReadingFromBeforeAcceptance() public {
        _expectRejected(
            signReading(meterKey, id, 1, uint64(block.timestamp) - 1, START + 1),
            IDeviceEvents.RejectReason.TimestampTooOld
        );
    }

    function test_Reject_MalleableCompactSignature() public {
        IMeteredBilling.SignedReading memory rd = _reading(1, START + 1);
        // s just above n/2 still fits the 255 bits of vs: refused as malleable before any recovery
        rd.vs = bytes32((uint256(rd.vs) & (1 << 255)) | (SECP256K1_N / 2 + 1));
        _expectRejected(rd, IDeviceEvents.RejectReason.SignatureMalleable);
    }

    function test_Reject_GarbageSignature() public {
        IMeteredBilling.SignedReading memory rd = _reading(1, START + 1);
        rd.r = bytes32(0);
        _expectRejected(rd, IDeviceEvents.RejectReason.SignatureInvalid);
    }

    function test_Reject_UnknownKey() public {
        _expectRejected(
            signReading(deviceKey(99), id, 1, uint64(block.timestamp), START + 1), IDeviceEvents.RejectReason.UnknownKey
        );
    }

    /// @dev A reading signed for another domain recovers to some unrelated address.
    function testFuzz_Reject_WrongDomain(uint8 which) public {
        which = uint8(bound(which, 0, 3));
        uint64 ts = uint64(block.timestamp);
        bytes32 sh = keccak256(abi.encode(billing.READING_TYPEHASH(), id, uint64(1), ts, uint256(START + 1)));
        assertEq(
            digestUnder("iotsettle", "1", block.chainid, address(billing), sh),
            billing.hashReading(id, 1, ts, START + 1)
        );
        bytes32 digest = digestUnder(
            which == 0 ? "iotsettle2" : "iotsettle",
            which == 1 ? "0" : "1",
            which == 2 ? 1 : block.chainid,
            which == 3 ? address(escrow) : address(billing),
            sh
        );
        (bytes32 r, bytes32 vs) = vm.signCompact(meterKey, digest);
        _expectRejected(
            IMeteredBilling.SignedReading(id, 1, ts, START + 1, r, vs), IDeviceEvents.RejectReason.UnknownKey
        );
    }

    function test_Reject_AfterChainIdChange() public {
        IMeteredBilling.SignedReading memory rd = _reading(1, START + 1);
        vm.chainId(block.chainid + 1);
        _expectRejected(rd, IDeviceEvents.RejectReason.UnknownKey);
    }

    function test_Reject_OnARedeployedContract() public {
        IMeteredBilling.SignedReading memory rd = _reading(1, START + 1);
        _settle(rd);
        // A fresh deployment hands out the same agreement id; the signature is bound to the first contract.
        billing = new MeteredBilling(registry);
        uint256 again = openAgreement(meter, flatTariff(PRICE), START, DEPOSIT);
        assertEq(again, id, "same id on the new deployment");
        _expectRejected(rd, IDeviceEvents.RejectReason.UnknownKey);
    }

    function test_RotatedKey_NewKeySettlesOldKeyRefused() public {
        uint256 newKey = deviceKey(30);
        rotate(meter, newKey, owner);
        // Signed after the retirement: refused (signed before, it would count for the grace).
        vm.warp(block.timestamp + 1);
        _expectRejected(_reading(1, START + 1), IDeviceEvents.RejectReason.KeyRotated);
        _settle(signReading(newKey, id, 1, uint64(block.timestamp), START + 1));
        assertEq(billing.agreementOf(id).lastSeq, 1, "the new key took over the agreement");
    }

    function test_RevokedDevice_Refused() public {
        vm.prank(owner);
        registry.revoke(meter);
        vm.warp(block.timestamp + 1);
        _expectRejected(_reading(1, START + 1), IDeviceEvents.RejectReason.DeviceRevoked);
    }

    /// @dev A batch reads a tariff's head once per run of readings of the same tariff: readings of different tariffs
    /// interleaved (flat 2, tiered, flat 7, flat 2 again) must each be billed at their own agreement's tariff.
    function test_Settle_BatchOfInterleavedTariffs_BillsEachAtItsOwnTariff() public {
        IMeteredBilling.TariffBlock[] memory tiers = new IMeteredBilling.TariffBlock[](2);
        tiers[0] = IMeteredBilling.TariffBlock(5, 1);
        tiers[1] = IMeteredBilling.TariffBlock(0, 10);
        uint32[4] memory tariffs = [flatTariff(2), billing.createTariff(tiers), flatTariff(7), 0];
        tariffs[3] = tariffs[0];
        uint256[4] memory expected = [uint256(2 * 10), 5 * 1 + 5 * 10, 7 * 10, 2 * 10];
        IMeteredBilling.SignedReading[] memory batch = new IMeteredBilling.SignedReading[](4);
        uint256[4] memory ids;
        for (uint256 i = 0; i < 4; ++i) {
            uint256 key = deviceKey(600 + i);
            ids[i] = openAgreement(registerDevice(key, IDeviceRegistry.DeviceKind.Meter, owner), tariffs[i], START, DEPOSIT);
            batch[i] = signReading(key, ids[i], 1, uint64(block.timestamp), START + 10);
        }
        vm.prank(relayer);
        assertEq(billing.settle(packReadings(batch)), 4, "every reading settles");
        for (uint256 i = 0; i < 4; ++i) {
            assertEq(billing.agreementOf(ids[i]).prepaid, DEPOSIT - expected[i], "billed at its own tariff");
        }
    }

    // ---------------------------------------------------------------- arrears, top-up, earnings

    function test_ShortDeposit_BillsWhatIsThereSuspendsAndRecordsArrears() public {
        vm.expectEmit(address(billing));
        emit IMeteredBilling.AgreementSuspended(id, 500);
        vm.expectEmit(address(billing));
        emit IMeteredBilling.ReadingsSettled(settledRecord(id, 1, DEPOSIT));
        _settle(_reading(1, START + 500)); // costs 1500, 1000 prepaid
        IMeteredBilling.Agreement memory a = billing.agreementOf(id);
        assertEq(uint8(a.status), uint8(IMeteredBilling.AgreementStatus.Suspended));
        assertEq(a.prepaid, 0);
        assertEq(a.arrears, 500);
        assertEq(a.lastValue, START + 500, "the register moved: nothing is billed twice");
        _expectRejected(_reading(2, START + 501), IDeviceEvents.RejectReason.Suspended);

        // a partial top-up pays arrears only and keeps the agreement suspended
        _topUp(300);
        a = billing.agreementOf(id);
        assertEq(a.arrears, 200);
        assertEq(a.prepaid, 0);
        assertEq(uint8(a.status), uint8(IMeteredBilling.AgreementStatus.Suspended));

        token.mint(consumer, 500);
        vm.startPrank(consumer);
        token.approve(address(billing), 500);
        vm.expectEmit(address(billing));
        emit IMeteredBilling.ToppedUp(id, consumer, 500, 200);
        vm.expectEmit(address(billing));
        emit IMeteredBilling.AgreementResumed(id);
        billing.topUp(id, 500);
        vm.stopPrank();
        a = billing.agreementOf(id);
        assertEq(a.arrears, 0);
        assertEq(a.prepaid, 300);
        assertEq(uint8(a.status), uint8(IMeteredBilling.AgreementStatus.Active));
        assertEq(billing.earningsOf(id), 1500, "arrears paid are earnings");

        _settle(_reading(2, START + 510)); // consumption during suspension is billed now
        assertEq(billing.agreementOf(id).prepaid, 270);
    }

    function _topUp(uint256 amount) internal {
        token.mint(consumer, amount);
        vm.startPrank(consumer);
        token.approve(address(billing), amount);
        billing.topUp(id, amount);
        vm.stopPrank();
    }

    function test_RevertWhen_TopUp_Invalid() public {
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.ZeroAmount.selector));
        billing.topUp(id, 0);
        vm.prank(provider);
        uint256 offered = billing.offer(consumer, meter, tariff, address(token), 0, 0);
        vm.expectRevert(
            abi.encodeWithSelector(
                IMeteredBilling.WrongStatus.selector, offered, IMeteredBilling.AgreementStatus.Offered
            )
        );
        billing.topUp(offered, 1);
        uint256 tooMuch = uint256(type(uint80).max) - DEPOSIT + 1;
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.BalanceOverflow.selector, uint256(type(uint80).max) + 1));
        billing.topUp(id, tooMuch);
    }

    /// @dev billed = min(Δ × price, prepaid), arrears = the rest, and what the provider can take never exceeds
    /// what was deposited.
    function testFuzz_Settle_BilledIsDeltaTimesPrice(uint64 delta, uint128 price, uint80 deposit) public {
        delta = uint64(bound(delta, 0, type(uint64).max - START));
        price = uint128(bound(price, 0, type(uint128).max));
        deposit = uint80(bound(deposit, 1, type(uint80).max));
        uint256 a = openAgreement(meter, flatTariff(price), START, deposit);
        vm.prank(relayer);
        billing.settle(oneReading(signReading(meterKey, a, 1, uint64(block.timestamp), START + uint256(delta))));
        uint256 cost = uint256(delta) * price;
        uint256 billed = cost < deposit ? cost : deposit;
        IMeteredBilling.Agreement memory ag = billing.agreementOf(a);
        assertEq(ag.prepaid, deposit - billed);
        assertEq(ag.arrears, cost - billed);
        assertEq(billing.earningsOf(a), billed);
        assertLe(billing.earningsOf(a), ag.deposited);
    }

    function test_WithdrawEarnings_PaysProviderOnce() public {
        _settle(_reading(1, START + 100));
        vm.expectEmit(address(billing));
        emit IMeteredBilling.EarningsWithdrawn(id, provider, 300);
        vm.prank(provider);
        assertEq(billing.withdrawEarnings(id), 300);
        assertEq(token.balanceOf(provider), 300);
        vm.expectRevert(abi.encodeWithSelector(IMeteredBilling.NoEarnings.selector, id));
        vm.prank(provider);
        billing.withdrawEarnings(id);
        vm.expectRevert(abi.encodeWithSelector(IMeteredBilling.NotProvider.selector, id, consumer));
        vm.prank(consumer);
        billing.withdrawEarnings(id);
    }

    /// @dev A thief with the provider's key alone cannot take earnings above the threshold of the provider's device
    /// guard: `withdrawEarnings` pays outside the credit ledger, so it asks the guard like `withdraw` does.
    function test_RevertWhen_StolenProviderKeyWithdrawsEarningsAboveTheGuardThreshold() public {
        WithdrawalGuard guard = new WithdrawalGuard(registry);
        uint256 phoneKey = deviceKey(21);
        registerDevice(phoneKey, IDeviceRegistry.DeviceKind.Tracker, provider);
        uint64 deadline = uint64(block.timestamp + 1 hours);
        bytes32[] memory anywhere = new bytes32[](0);
        bytes32 update = guard.hashGuardUpdate(provider, address(token), true, 100, anywhere, 0, deadline);
        vm.startPrank(provider);
        guard.setGuard(address(token), 100, anywhere, deadline, sign65(phoneKey, update));
        billing.setWithdrawalGuard(address(token), address(guard));
        vm.stopPrank();
        _settle(_reading(1, START + 100)); // 300 earned

        vm.expectRevert(
            abi.encodeWithSelector(IWithdrawalGuard.DeviceApprovalRequired.selector, address(token), provider, 300, 100)
        );
        vm.prank(provider);
        billing.withdrawEarnings(id);
        assertEq(billing.earningsOf(id), 300, "the earnings stay where they were");

        // with the phone's approval of this withdrawal at this contract, the provider is paid
        bytes32 approval = guard.hashWithdrawalApproval(
            address(billing), provider, address(token), 300, guard.nonces(provider), deadline, bytes32(0)
        );
        vm.startPrank(provider);
        guard.approveWithdrawal(address(billing), address(token), 300, deadline, bytes32(0), sign65(phoneKey, approval));
        assertEq(billing.withdrawEarnings(id), 300);
        vm.stopPrank();
        assertEq(token.balanceOf(provider), 300);
    }

    function test_WithdrawEarnings_ReentrantTokenGainsNothing() public {
        ReentrantToken evil = new ReentrantToken();
        vm.prank(provider);
        uint256 a = billing.offer(consumer, meter, tariff, address(evil), START, 0);
        evil.mint(consumer, DEPOSIT);
        vm.startPrank(consumer);
        evil.approve(address(billing), DEPOSIT);
        billing.accept(a, DEPOSIT, START);
        vm.stopPrank();
        _settle(signReading(meterKey, a, 1, uint64(block.timestamp), START + 100));
        evil.arm(address(billing), abi.encodeCall(billing.withdrawEarnings, (a)));
        vm.prank(provider);
        billing.withdrawEarnings(a);
        assertTrue(evil.reentered());
        assertFalse(evil.reentrySucceeded(), "the guard refuses the re-entry");
        assertEq(evil.balanceOf(provider), 300);
        assertEq(evil.balanceOf(address(billing)), DEPOSIT - 300);
    }

    // ---------------------------------------------------------------- closing

    function test_Close_AfterNoticePeriodRefundsTheRest() public {
        _settle(_reading(1, START + 100));
        vm.prank(consumer);
        vm.expectEmit(address(billing));
        emit IMeteredBilling.CloseRequested(id, uint64(block.timestamp + 1 days));
        billing.requestClose(id);
        uint64 closeAt = billing.agreementOf(id).closeAt;

        vm.warp(closeAt - 1);
        _settle(_reading(2, START + 110)); // readings keep settling during the notice
        uint256 notBefore = closeAt + billing.SETTLEMENT_GRACE() + 1;
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.TooEarly.selector, id, notBefore, closeAt - 1));
        vm.prank(consumer);
        billing.close(id);
        vm.warp(notBefore - 1);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.TooEarly.selector, id, notBefore, notBefore - 1));
        vm.prank(consumer);
        billing.close(id);

        vm.warp(notBefore);
        vm.expectEmit(address(billing));
        emit IMeteredBilling.AgreementClosed(id, DEPOSIT - 330);
        vm.prank(consumer);
        assertEq(billing.close(id), DEPOSIT - 330);
        assertEq(token.balanceOf(consumer), DEPOSIT - 330);
        assertEq(billing.earningsOf(id), 330, "the provider keeps what was billed");
        vm.prank(provider);
        billing.withdrawEarnings(id);
        assertEq(token.balanceOf(address(billing)), 0, "nothing left behind");
        _expectRejected(_reading(3, START + 120), IDeviceEvents.RejectReason.NotActive);
    }

    function test_RevertWhen_Close_Invalid() public {
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.CloseNotRequested.selector, id));
        vm.prank(consumer);
        billing.close(id);
        vm.expectRevert(abi.encodeWithSelector(IMeteredBilling.NotConsumer.selector, id, provider));
        vm.prank(provider);
        billing.close(id);
        vm.expectRevert(abi.encodeWithSelector(IMeteredBilling.NotConsumer.selector, id, provider));
        vm.prank(provider);
        billing.requestClose(id);
        vm.startPrank(consumer);
        billing.requestClose(id);
        billing.requestClose(id); // a second request keeps the first date
        vm.warp(block.timestamp + 1 days + billing.SETTLEMENT_GRACE() + 1);
        billing.close(id);
        vm.expectRevert(
            abi.encodeWithSelector(IMeteredBilling.WrongStatus.selector, id, IMeteredBilling.AgreementStatus.Closed)
        );
        billing.close(id);
        vm.expectRevert(
            abi.encodeWithSelector(IMeteredBilling.WrongStatus.selector, id, IMeteredBilling.AgreementStatus.Closed)
        );
        billing.requestClose(id);
        vm.stopPrank();
    }

    function test_CloseWithReading_SettlesAndEndsNowWithoutNotice() public {
        vm.prank(provider);
        uint256 a = billing.offer(consumer, meter, tariff, address(token), START, 1 days);
        token.mint(consumer, DEPOSIT);
        vm.startPrank(consumer);
        token.approve(address(billing), DEPOSIT);
        billing.accept(a, DEPOSIT, START);
        vm.stopPrank();
        IMeteredBilling.SignedReading memory rd = signReading(meterKey, a, 1, uint64(block.timestamp), START + 50);
        vm.expectEmit(address(billing));
        emit IMeteredBilling.CloseRequested(a, uint64(block.timestamp));
        vm.prank(consumer);
        assertEq(billing.closeWithReading(rd), uint64(block.timestamp), "the 1-day notice is skipped");
        assertEq(billing.earningsOf(a), 150);
        assertEq(token.balanceOf(consumer), 0, "the refund waits for the grace");
        assertEq(uint8(billing.agreementOf(a).status), uint8(IMeteredBilling.AgreementStatus.Active));
        vm.warp(block.timestamp + billing.SETTLEMENT_GRACE() + 1);
        vm.prank(consumer);
        assertEq(billing.close(a), DEPOSIT - 150);
        assertEq(token.balanceOf(consumer), DEPOSIT - 150);
    }

    function test_RevertWhen_CloseWithReading_StaleOrBadReading() public {
        IMeteredBilling.SignedReading memory rd = _reading(1, START + 50);
        uint64 skew = billing.MAX_CLOCK_SKEW();
        vm.warp(block.timestamp + skew + 1);
        vm.expectRevert(
            abi.encodeWithSelector(
                IDeviceEvents.EventRejected.selector, id, 1, IDeviceEvents.RejectReason.TimestampTooOld
            )
        );
        vm.prank(consumer);
        billing.closeWithReading(rd);

        rd = _reading(1, START - 1);
        vm.expectRevert(
            abi.encodeWithSelector(
                IDeviceEvents.EventRejected.selector, id, 1, IDeviceEvents.RejectReason.CounterRollback
            )
        );
        vm.prank(consumer);
        billing.closeWithReading(rd);

        rd = _reading(1, START + 1);
        vm.expectRevert(abi.encodeWithSelector(IMeteredBilling.NotConsumer.selector, id, relayer));
        vm.prank(relayer);
        billing.closeWithReading(rd);
    }

    function test_Close_RevertingConsumerIsCreditedInstead() public {
        Payee payee = new Payee();
        vm.prank(provider);
        uint256 a = billing.offer(address(payee), meter, tariff, address(0), START, 0);
        vm.deal(address(payee), 1 ether);
        payee.exec(address(billing), 1 ether, abi.encodeCall(billing.accept, (a, 1 ether, START)));
        payee.exec(address(billing), 0, abi.encodeCall(billing.requestClose, (a)));
        vm.warp(block.timestamp + billing.SETTLEMENT_GRACE() + 1);
        payee.setMode(Payee.Mode.Revert);
        vm.expectEmit(address(billing));
        emit IPullPayments.Credited(address(0), address(payee), 1 ether);
        payee.exec(address(billing), 0, abi.encodeCall(billing.close, (a)));
        assertEq(billing.withdrawable(address(0), address(payee)), 1 ether, "kept for the consumer");
        assertEq(billing.credited(address(0)), 1 ether);
        // other agreements are untouched and still settle
        _settle(_reading(1, START + 1));
        assertEq(address(billing).balance, 1 ether);
        payee.setMode(Payee.Mode.Accept);
        payee.exec(address(billing), 0, abi.encodeCall(billing.withdraw, (address(0))));
        assertEq(address(payee).balance, 1 ether);
        assertEq(billing.credited(address(0)), 0);
    }

    function test_Close_ReentrantConsumerGainsNothing() public {
        Payee payee = new Payee();
        vm.prank(provider);
        uint256 a = billing.offer(address(payee), meter, tariff, address(0), START, 0);
        vm.deal(address(payee), 1 ether);
        payee.exec(address(billing), 1 ether, abi.encodeCall(billing.accept, (a, 1 ether, START)));
        payee.exec(address(billing), 0, abi.encodeCall(billing.requestClose, (a)));
        vm.warp(block.timestamp + billing.SETTLEMENT_GRACE() + 1);
        payee.armReentry(address(billing), abi.encodeCall(billing.close, (a)));
        payee.exec(address(billing), 0, abi.encodeCall(billing.close, (a)));
        assertFalse(payee.reentrySucceeded());
        assertEq(address(payee).balance, 1 ether, "refunded exactly once");
        assertEq(address(billing).balance, 0);
    }

    // ---------------------------------------------------------------- relayers choose nothing

    /// @dev Issue scenario 5: a reading signed before closeAt but relayed after it still bills, whether the consumer
    /// races to close at closeAt or the oracle withheld the reading during the notice.
    function test_Scenario5_CloseRaceCannotEraseSignedConsumption() public {
        uint256 deposit = 10_000;
        uint256 a = openAgreement(meter, tariff, START, deposit);
        vm.prank(consumer);
        billing.requestClose(a);
        uint64 closeAt = billing.agreementOf(a).closeAt;

        vm.warp(closeAt - 10);
        IMeteredBilling.SignedReading memory signedInTime =
            signReading(meterKey, a, 1, uint64(block.timestamp), START + 900);

        vm.warp(closeAt);
        vm.prank(consumer);
        try billing.close(a) {} catch {} // the race: close the moment the notice ends
        vm.warp(closeAt + 5 minutes);
        vm.prank(relayer);
        billing.settle(oneReading(signedInTime));

        vm.warp(closeAt + billing.SETTLEMENT_GRACE() + 1);
        vm.prank(consumer);
        try billing.close(a) {} catch {}
        assertEq(billing.earningsOf(a), 900 * PRICE, "the 900 signed units are billed");
        assertEq(token.balanceOf(consumer), deposit - 900 * PRICE, "the consumer gets only the unbilled rest");
    }

    /// @dev Issue scenario 5: what the meter signs after closeAt is not the consumer's to pay.
    function test_Scenario5_ReadingAfterCloseAtIsRefused() public {
        vm.prank(consumer);
        billing.requestClose(id);
        uint64 closeAt = billing.agreementOf(id).closeAt;
        vm.warp(closeAt);
        _settle(_reading(1, START + 10)); // signed at closeAt: still in
        vm.warp(closeAt + 1);
        _expectRejected(_reading(2, START + 50), IDeviceEvents.RejectReason.AfterEnd);
        assertEq(billing.earningsOf(id), 10 * PRICE, "a reading signed after closeAt bills nothing");
        // a fresh final reading cannot close once closeAt has passed: the close waits for the grace
        IMeteredBilling.SignedReading memory fin = _reading(2, START + 50);
        vm.expectRevert(
            abi.encodeWithSelector(IDeviceEvents.EventRejected.selector, id, 2, IDeviceEvents.RejectReason.AfterEnd)
        );
        vm.prank(consumer);
        billing.closeWithReading(fin);
    }

    /// @dev Issue scenario 5, withheld during the notice: whatever subset of the signed readings is relayed, in any
    /// order, late within the grace, the bill is the newest reading signed by closeAt.
    function testFuzz_Scenario5_WithheldReadingsStillBillAfterTheNotice(uint8 mask, uint8 order) public {
        uint256 a = openAgreement(meter, tariff, START, 1e6);
        vm.prank(consumer);
        billing.requestClose(a);
        uint64 closeAt = billing.agreementOf(a).closeAt;
        IMeteredBilling.SignedReading[] memory all = new IMeteredBilling.SignedReading[](4);
        for (uint256 i = 0; i < 4; ++i) {
            all[i] = signReading(meterKey, a, uint64(i + 1), uint64(closeAt - 300 + 100 * i), START + 300 * (i + 1));
        }
        vm.warp(closeAt + 10 minutes);
        mask = uint8(bound(mask, 0, 15)) | 8; // the newest reading by closeAt is relayed at some point
        for (uint256 k = 0; k < 4; ++k) {
            uint256 i = (k + order) % 4;
            if (mask & (1 << i) != 0) billing.settle(oneReading(all[i]));
        }
        vm.warp(closeAt + billing.SETTLEMENT_GRACE() + 1);
        vm.prank(consumer);
        billing.close(a);
        assertEq(billing.earningsOf(a), 1200 * PRICE, "billed to the newest reading signed by closeAt");
    }

    // ---------------------------------------------------------------- review findings

    /// @dev Review finding 4: closing on a final reading must not skip a newer reading signed before the close. The
    /// final reading only starts the end (closeAt = now); the refund waits for the grace like any other close.
    function test_Review_ConsumerClosesOnAnOlderFreshReadingAndSkipsNewerSignedConsumption() public {
        uint256 a = openAgreement(meter, flatTariff(10), 0, 10_000);
        uint64 t0 = uint64(block.timestamp);
        IMeteredBilling.SignedReading memory r1 = signReading(meterKey, a, 1, t0 + 10, 100);
        IMeteredBilling.SignedReading memory r5 = signReading(meterKey, a, 5, t0 + 290, 900);

        vm.warp(t0 + 300);
        vm.prank(consumer);
        billing.closeWithReading(r1);
        assertEq(token.balanceOf(consumer), 0, "no refund before the grace");
        assertEq(billing.agreementOf(a).closeAt, t0 + 300, "the end starts now");

        vm.prank(relayer);
        assertEq(billing.settle(oneReading(r5)), 1, "the newer reading, signed before the close, settles");
        uint256 notBefore = uint256(t0) + 300 + billing.SETTLEMENT_GRACE() + 1;
        vm.warp(notBefore - 1);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.TooEarly.selector, a, notBefore, notBefore - 1));
        vm.prank(consumer);
        billing.close(a);
        vm.warp(notBefore);
        vm.prank(consumer);
        assertEq(billing.close(a), 1_000, "refund of what 900 units left");
        assertEq(billing.earningsOf(a), 9_000, "the provider is paid the 900 signed units");
        assertEq(token.balanceOf(consumer), 1_000);
    }

    /// @dev Review finding 4: a final reading during the notice brings closeAt forward to now (never later); one
    /// after a past closeAt is refused, and the existing closeAt stays.
    function test_Review_FinalReadingNeverMovesTheEndLater() public {
        vm.prank(consumer);
        billing.requestClose(id);
        vm.warp(vm.getBlockTimestamp() + 1 hours);
        IMeteredBilling.SignedReading memory fin = _reading(1, START + 10);
        vm.expectEmit(address(billing));
        emit IMeteredBilling.CloseRequested(id, uint64(vm.getBlockTimestamp()));
        vm.prank(consumer);
        assertEq(billing.closeWithReading(fin), uint64(vm.getBlockTimestamp()));
        uint64 closeAt = billing.agreementOf(id).closeAt;
        assertEq(closeAt, vm.getBlockTimestamp(), "brought forward from the notice");
        vm.warp(closeAt + 1);
        IMeteredBilling.SignedReading memory late = _reading(2, START + 20);
        vm.expectRevert(
            abi.encodeWithSelector(IDeviceEvents.EventRejected.selector, id, 2, IDeviceEvents.RejectReason.AfterEnd)
        );
        vm.prank(consumer);
        billing.closeWithReading(late);
        assertEq(billing.agreementOf(id).closeAt, closeAt);
    }

    /// @dev Review finding 5: at exactly closeAt + SETTLEMENT_GRACE a reading signed by closeAt still settles and
    /// close is still early, so the order inside the block cannot decide the bill.
    function test_Review_AtTheGraceBoundaryTheReadingSettlesAndCloseWaitsOneSecond() public {
        uint256 a = openAgreement(meter, flatTariff(10), 0, 10_000);
        vm.prank(consumer);
        billing.requestClose(a);
        uint64 closeAt = billing.agreementOf(a).closeAt;
        IMeteredBilling.SignedReading memory rd = signReading(meterKey, a, 1, closeAt, 900);
        uint256 boundary = uint256(closeAt) + billing.SETTLEMENT_GRACE();
        vm.warp(boundary);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.TooEarly.selector, a, boundary + 1, boundary));
        vm.prank(consumer);
        billing.close(a); // close first in the block: still early
        vm.prank(relayer);
        assertEq(billing.settle(oneReading(rd)), 1, "the reading signed at closeAt settles");
        vm.warp(boundary + 1);
        vm.prank(consumer);
        assertEq(billing.close(a), 1_000);
        assertEq(billing.earningsOf(a), 9_000);
    }

    /// @dev Issue scenario 7b: the consumer's acceptance names the start value it accepts.
    function test_Scenario7b_AcceptNamesTheStartValue() public {
        vm.prank(provider);
        uint256 a = billing.offer(consumer, meter, tariff, address(token), START + 5_000, 1 days);
        token.mint(consumer, DEPOSIT);
        vm.startPrank(consumer);
        token.approve(address(billing), DEPOSIT);
        vm.expectRevert(
            abi.encodeWithSelector(
                ICommonErrors.TermsMismatch.selector, a, bytes32(uint256(START + 5_000)), bytes32(uint256(START))
            )
        );
        billing.accept(a, DEPOSIT, START);
        billing.accept(a, DEPOSIT, START + 5_000);
        vm.stopPrank();
        assertEq(billing.agreementOf(a).lastValue, START + 5_000, "billing starts where the consumer agreed");
    }
}
