// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

import {ICommonErrors} from "../../contracts/interfaces/ICommonErrors.sol";
import {IDeliveryEscrow} from "../../contracts/interfaces/IDeliveryEscrow.sol";
import {IDeviceEvents} from "../../contracts/interfaces/IDeviceEvents.sol";
import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {IPullPayments} from "../../contracts/interfaces/IPullPayments.sol";
import {Fixture} from "./utils/Fixture.sol";
import {FalseReturningToken, FeeOnTransferToken, Payee, ReentrantToken, RevertingToken} from "./utils/Hostile.sol";

contract DeliveryEscrowTest is Fixture {
    uint256 internal trackerKey = deviceKey(40);
    address internal tracker;
    bytes32 internal constant DEST = bytes32("u4pruydqqvj");
    uint256 internal constant AMOUNT = 1 ether;
    int32 internal constant LIMIT = 800; // 8.00 °C
    uint16 internal constant PENALTY = 2_500; // 25 %
    uint64 internal deadline;
    uint256 internal id;

    function setUp() public override {
        super.setUp();
        tracker = registerDevice(trackerKey, IDeviceRegistry.DeviceKind.Tracker, owner);
        deadline = uint64(block.timestamp + 2 days);
        id = _create(address(token), AMOUNT, LIMIT, PENALTY);
    }

    function _create(address tok, uint256 amount, int32 limit, uint16 bps) internal returns (uint256) {
        if (tok == address(0)) {
            vm.deal(buyer, amount);
            vm.prank(buyer);
            return escrow.createEscrow{value: amount}(seller, tracker, tok, amount, DEST, deadline, limit, bps);
        }
        TestTokenLike(tok).mint(buyer, amount);
        vm.startPrank(buyer);
        TestTokenLike(tok).approve(address(escrow), amount);
        uint256 newId = escrow.createEscrow(seller, tracker, tok, amount, DEST, deadline, limit, bps);
        vm.stopPrank();
        return newId;
    }

    function _delivery(uint256 escrowId, int32 temp) internal view returns (IDeliveryEscrow.SignedDelivery memory) {
        return signDelivery(trackerKey, escrowId, 1, uint64(vm.getBlockTimestamp()), DEST, temp);
    }

    function _expectRejected(IDeliveryEscrow.SignedDelivery memory d, IDeviceEvents.RejectReason reason) internal {
        IDeliveryEscrow.Escrow memory before = escrow.escrowOf(d.escrowId);
        vm.expectEmit(address(escrow));
        emit IDeliveryEscrow.DeliveryRejected(d.escrowId, d.seq, reason);
        vm.prank(relayer);
        assertEq(escrow.confirmDeliveries(oneDelivery(d)), 0);
        assertEq(keccak256(abi.encode(before)), keccak256(abi.encode(escrow.escrowOf(d.escrowId))), "unchanged");
        vm.expectRevert(abi.encodeWithSelector(IDeviceEvents.EventRejected.selector, d.escrowId, d.seq, reason));
        escrow.confirmDelivery(d);
        // The packed batch gives the same outcome with the escrow's terms, and with terms a relayer got wrong.
        bytes memory terms = d.escrowId <= 1 << 62 ? _termsOrZero(d.escrowId) : new bytes(98);
        bytes memory wrong =
            abi.encodePacked(relayer, relayer, relayer, uint128(1), uint64(0), uint64(0), int32(0), uint16(0));
        for (uint256 k = 0; k < 2; ++k) {
            vm.expectEmit(address(escrow));
            emit IDeliveryEscrow.DeliveryRejected(d.escrowId, d.seq, reason);
            vm.prank(relayer);
            assertEq(escrow.confirmDeliveriesPacked(packDelivery(d, k == 0 ? terms : wrong, "")), 0);
            assertEq(keccak256(abi.encode(before)), keccak256(abi.encode(escrow.escrowOf(d.escrowId))), "unchanged");
        }
    }

    function _termsOrZero(uint256 escrowId) internal view returns (bytes memory) {
        try escrow.deliveryTerms(escrowId) returns (bytes memory terms) {
            return terms;
        } catch {
            return new bytes(98);
        }
    }

    function _confirm(IDeliveryEscrow.SignedDelivery memory d) internal {
        vm.prank(relayer);
        assertEq(escrow.confirmDeliveries(oneDelivery(d)), 1, "delivery confirms");
    }

    // ---------------------------------------------------------------- create

    function test_Create_FundsAndRecordsTerms() public view {
        IDeliveryEscrow.Escrow memory e = escrow.escrowOf(id);
        assertEq(e.buyer, buyer);
        assertEq(e.seller, seller);
        assertEq(e.device, tracker);
        assertEq(e.token, address(token));
        assertEq(e.amount, AMOUNT);
        assertEq(e.destination, DEST);
        assertEq(e.createdAt, block.timestamp);
        assertEq(e.deadline, deadline);
        assertEq(e.temperatureLimit, LIMIT);
        assertEq(e.penaltyBps, PENALTY);
        assertEq(uint8(e.state), uint8(IDeliveryEscrow.EscrowState.Funded));
        assertEq(token.balanceOf(address(escrow)), AMOUNT);
    }

    function test_Create_EmitsEscrowCreated() public {
        token.mint(buyer, 5);
        vm.startPrank(buyer);
        token.approve(address(escrow), 5);
        vm.expectEmit(address(escrow));
        emit IDeliveryEscrow.EscrowCreated(id + 1, buyer, seller, tracker, address(token), 5, DEST, deadline, -1800, 0);
        escrow.createEscrow(seller, tracker, address(token), 5, DEST, deadline, -1800, 0);
        vm.stopPrank();
    }

    function test_Create_Ether() public {
        uint256 e = _create(address(0), 2 ether, 0, 0);
        assertEq(address(escrow).balance, 2 ether);
        assertEq(escrow.escrowOf(e).amount, 2 ether);
    }

    function test_RevertWhen_Create_BadTerms() public {
        vm.deal(buyer, 10 ether);
        vm.startPrank(buyer);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.ZeroAddress.selector));
        escrow.createEscrow(address(0), tracker, address(0), 1, DEST, deadline, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.ZeroAmount.selector));
        escrow.createEscrow(seller, tracker, address(0), 0, DEST, deadline, 0, 0);
        uint256 huge = uint256(type(uint128).max) + 1;
        vm.expectRevert(abi.encodeWithSelector(IDeliveryEscrow.AmountTooLarge.selector, huge));
        escrow.createEscrow(seller, tracker, address(token), huge, DEST, deadline, 0, 0);
        vm.expectRevert(
            abi.encodeWithSelector(
                IDeliveryEscrow.DeadlineNotInFuture.selector, uint64(block.timestamp), block.timestamp
            )
        );
        escrow.createEscrow(seller, tracker, address(0), 1, DEST, uint64(block.timestamp), 0, 0);
        vm.expectRevert(abi.encodeWithSelector(IDeliveryEscrow.PenaltyTooHigh.selector, uint16(10_001)));
        escrow.createEscrow(seller, tracker, address(0), 1, DEST, deadline, 0, 10_001);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.UnknownDevice.selector, relayer));
        escrow.createEscrow(seller, relayer, address(0), 1, DEST, deadline, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.WrongValue.selector, 1 ether, 0.5 ether));
        escrow.createEscrow{value: 0.5 ether}(seller, tracker, address(0), 1 ether, DEST, deadline, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.WrongValue.selector, 0, 1));
        escrow.createEscrow{value: 1}(seller, tracker, address(token), 1, DEST, deadline, 0, 0);
        vm.stopPrank();

        address meter = registerDevice(deviceKey(41), IDeviceRegistry.DeviceKind.Meter, owner);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.WrongDeviceKind.selector, meter));
        vm.prank(buyer);
        escrow.createEscrow(seller, meter, address(0), 1, DEST, deadline, 0, 0);
    }

    function test_RevertWhen_Create_FeeOnTransferToken() public {
        FeeOnTransferToken fee = new FeeOnTransferToken();
        fee.mint(buyer, 1000);
        vm.startPrank(buyer);
        fee.approve(address(escrow), 1000);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.WrongValue.selector, 1000, 990));
        escrow.createEscrow(seller, tracker, address(fee), 1000, DEST, deadline, 0, 0);
        vm.stopPrank();
    }

    function test_RevertWhen_Create_FalseReturningToken() public {
        FalseReturningToken liar = new FalseReturningToken();
        liar.mint(buyer, 1000);
        liar.setLying(true);
        vm.startPrank(buyer);
        liar.approve(address(escrow), 1000);
        vm.expectRevert(abi.encodeWithSelector(SafeERC20.SafeERC20FailedOperation.selector, address(liar)));
        escrow.createEscrow(seller, tracker, address(liar), 1000, DEST, deadline, 0, 0);
        vm.stopPrank();
    }

    // ---------------------------------------------------------------- delivery

    function test_Delivery_ReleasesToSellerWithinLimit() public {
        vm.expectEmit(address(escrow));
        emit IDeliveryEscrow.DeliveryConfirmed(id, 1, AMOUNT, 0);
        _confirm(_delivery(id, LIMIT)); // exactly at the limit is fine
        IDeliveryEscrow.Escrow memory e = escrow.escrowOf(id);
        assertEq(uint8(e.state), uint8(IDeliveryEscrow.EscrowState.Released));
        assertEq(e.deliverySeq, 1);
        assertEq(escrow.withdrawable(address(token), seller), AMOUNT);
        vm.prank(seller);
        vm.expectEmit(address(escrow));
        emit IPullPayments.Withdrawn(address(token), seller, AMOUNT);
        escrow.withdraw(address(token));
        assertEq(token.balanceOf(seller), AMOUNT);
        assertEq(token.balanceOf(address(escrow)), 0);
    }

    function test_Delivery_ColdChainBreachRefundsShareToBuyer() public {
        vm.expectEmit(address(escrow));
        emit IDeliveryEscrow.DeliveryConfirmed(id, 1, 0.75 ether, 0.25 ether);
        _confirm(_delivery(id, LIMIT + 1));
        assertEq(escrow.withdrawable(address(token), seller), 0.75 ether);
        assertEq(escrow.withdrawable(address(token), buyer), 0.25 ether);
    }

    function test_Delivery_NoColdChainTermsNoPenalty() public {
        uint256 e = _create(address(token), AMOUNT, -5000, 0);
        _confirm(_delivery(e, 4000));
        assertEq(escrow.withdrawable(address(token), seller), AMOUNT);
    }

    function testFuzz_Delivery_PayerDebitEqualsPayeeCredits(uint128 amount, uint16 bps, int32 limit, int32 temp)
        public
    {
        amount = uint128(bound(amount, 1, type(uint128).max));
        bps = uint16(bound(bps, 0, 10_000));
        uint256 e = _create(address(token), amount, limit, bps);
        _confirm(_delivery(e, temp));
        uint256 toBuyer = escrow.withdrawable(address(token), buyer);
        uint256 toSeller = escrow.withdrawable(address(token), seller);
        assertEq(toBuyer + toSeller, amount, "every unit goes to exactly one side");
        if (bps == 0 || temp <= limit) assertEq(toBuyer, 0);
        else assertEq(toBuyer, uint256(amount) * bps / 10_000);
    }

    function test_Delivery_BatchSkipsBadItems() public {
        uint256 e2 = _create(address(token), AMOUNT, LIMIT, PENALTY);
        IDeliveryEscrow.SignedDelivery[] memory batch = new IDeliveryEscrow.SignedDelivery[](3);
        batch[0] = _delivery(id, 0);
        batch[1] = signDelivery(trackerKey, e2, 2, uint64(block.timestamp), bytes32("elsewhere"), 0);
        batch[2] = signDelivery(trackerKey, e2, 3, uint64(block.timestamp), DEST, 0);
        vm.expectEmit(address(escrow));
        emit IDeliveryEscrow.DeliveryConfirmed(id, 1, AMOUNT, 0);
        vm.expectEmit(address(escrow));
        emit IDeliveryEscrow.DeliveryRejected(e2, 2, IDeviceEvents.RejectReason.WrongLocation);
        vm.expectEmit(address(escrow));
        emit IDeliveryEscrow.DeliveryConfirmed(e2, 3, AMOUNT, 0);
        vm.prank(relayer);
        assertEq(escrow.confirmDeliveries(batch), 2);
        assertEq(escrow.withdrawable(address(token), seller), 2 * AMOUNT);
    }

    function test_Packed_ReleasesWithTheEscrowsTerms() public {
        uint256 e2 = _create(address(token), AMOUNT, LIMIT, PENALTY);
        bytes memory t1 = escrow.deliveryTerms(id);
        bytes memory t2 = escrow.deliveryTerms(e2);
        bytes memory batch =
            bytes.concat(packDelivery(_delivery(id, LIMIT + 1), t1, ""), packDelivery(_delivery(e2, 0), t2, t1));
        assertEq(batch.length, 222 + 182, "the second record reuses the first one's seller and token");
        vm.expectEmit(address(escrow));
        emit IDeliveryEscrow.DeliveryConfirmed(id, 1, 0.75 ether, 0.25 ether);
        vm.expectEmit(address(escrow));
        emit IPullPayments.Credited(address(token), buyer, 0.25 ether);
        vm.expectEmit(address(escrow));
        emit IDeliveryEscrow.DeliveryConfirmed(e2, 1, AMOUNT, 0);
        vm.expectEmit(address(escrow));
        emit IPullPayments.Credited(address(token), seller, 0.75 ether + AMOUNT);
        vm.prank(relayer);
        assertEq(escrow.confirmDeliveriesPacked(batch), 2);
        assertEq(escrow.withdrawable(address(token), seller), 0.75 ether + AMOUNT);
        assertEq(escrow.withdrawable(address(token), buyer), 0.25 ether);
        assertEq(escrow.escrowOf(e2).deliverySeq, 1);
        assertEq(uint8(escrow.escrowOf(e2).state), uint8(IDeliveryEscrow.EscrowState.Released));
    }

    /// @dev A relayer who sends another seller (itself) in the terms pays for the storage reads; the seller is paid.
    function test_Packed_ForgedTermsCannotRedirectThePayment() public {
        bytes memory forged = abi.encodePacked(
            relayer, address(token), tracker, uint128(AMOUNT), uint64(block.timestamp), deadline, LIMIT, PENALTY
        );
        vm.prank(relayer);
        assertEq(escrow.confirmDeliveriesPacked(packDelivery(_delivery(id, 0), forged, "")), 1);
        assertEq(escrow.withdrawable(address(token), seller), AMOUNT);
        assertEq(escrow.withdrawable(address(token), relayer), 0);
    }

    function test_Packed_RevertWhen_RecordCutShort() public {
        bytes memory record = packDelivery(_delivery(id, 0), escrow.deliveryTerms(id), "");
        bytes memory cut = new bytes(record.length - 1);
        for (uint256 i = 0; i < cut.length; ++i) {
            cut[i] = record[i];
        }
        vm.expectRevert(abi.encodeWithSelector(IDeliveryEscrow.MalformedBatch.selector, cut.length));
        escrow.confirmDeliveriesPacked(cut);
        assertEq(escrow.confirmDeliveriesPacked(""), 0, "an empty batch does nothing");
    }

    function test_Reject_ReplayedDelivery() public {
        IDeliveryEscrow.SignedDelivery memory d = _delivery(id, 0);
        _confirm(d);
        _expectRejected(d, IDeviceEvents.RejectReason.Replayed);
        assertEq(escrow.withdrawable(address(token), seller), AMOUNT, "paid once");
    }

    function test_Reject_UnknownEscrow() public {
        _expectRejected(_delivery(id + 1, 0), IDeviceEvents.RejectReason.UnknownTarget);
    }

    function test_Reject_AfterRefundOrCancel() public {
        uint256 e2 = _create(address(token), AMOUNT, 0, 0);
        vm.prank(seller);
        escrow.cancel(e2);
        _expectRejected(_delivery(e2, 0), IDeviceEvents.RejectReason.NotActive);
        vm.warp(deadline + escrow.SETTLEMENT_GRACE() + 1);
        vm.prank(buyer);
        escrow.refund(id);
        _expectRejected(signDelivery(trackerKey, id, 1, deadline, DEST, 0), IDeviceEvents.RejectReason.NotActive);
    }

    function test_Reject_WrongLocation() public {
        _expectRejected(
            signDelivery(trackerKey, id, 1, uint64(block.timestamp), bytes32("u4pruydqqvk"), 0),
            IDeviceEvents.RejectReason.WrongLocation
        );
    }

    function test_Delivery_DeadlineEdges() public {
        vm.warp(deadline + 1);
        _expectRejected(
            signDelivery(trackerKey, id, 1, deadline + 1, DEST, 0), IDeviceEvents.RejectReason.DeadlinePassed
        );
        // signed at the deadline second and relayed late: still valid while the buyer has not refunded
        _confirm(signDelivery(trackerKey, id, 1, deadline, DEST, 0));
    }

    function test_Reject_TimestampEdges() public {
        uint64 skew = escrow.MAX_CLOCK_SKEW();
        _expectRejected(
            signDelivery(trackerKey, id, 1, uint64(block.timestamp) + skew + 1, DEST, 0),
            IDeviceEvents.RejectReason.TimestampInFuture
        );
        _expectRejected(
            signDelivery(trackerKey, id, 1, uint64(block.timestamp) - 1, DEST, 0),
            IDeviceEvents.RejectReason.TimestampTooOld
        );
        _confirm(signDelivery(trackerKey, id, 1, uint64(block.timestamp) + skew, DEST, 0));
    }

    function test_Reject_Signatures() public {
        IDeliveryEscrow.SignedDelivery memory d = _delivery(id, 0);
        d.vs = bytes32((uint256(d.vs) & (1 << 255)) | (SECP256K1_N / 2 + 1));
        _expectRejected(d, IDeviceEvents.RejectReason.SignatureMalleable);
        d = _delivery(id, 0);
        d.r = bytes32(0);
        _expectRejected(d, IDeviceEvents.RejectReason.SignatureInvalid);
        d = _delivery(id, 0);
        d.maxTemperature = 0 + 1; // tampered field: the signature now recovers to a stranger
        _expectRejected(d, IDeviceEvents.RejectReason.UnknownKey);
        _expectRejected(
            signDelivery(deviceKey(77), id, 1, uint64(block.timestamp), DEST, 0), IDeviceEvents.RejectReason.UnknownKey
        );
    }

    function test_Reject_OtherTracker() public {
        uint256 otherKey = deviceKey(42);
        registerDevice(otherKey, IDeviceRegistry.DeviceKind.Tracker, owner);
        _expectRejected(
            signDelivery(otherKey, id, 1, uint64(block.timestamp), DEST, 0), IDeviceEvents.RejectReason.WrongDevice
        );
    }

    function test_Reject_WrongDomain() public {
        bytes32 sh =
            keccak256(abi.encode(escrow.DELIVERY_TYPEHASH(), id, uint64(1), uint64(block.timestamp), DEST, int32(0)));
        assertEq(
            digestUnder("iotsettle", "1", block.chainid, address(escrow), sh),
            escrow.hashDelivery(id, 1, uint64(block.timestamp), DEST, 0)
        );
        // the same delivery signed for the billing contract's domain
        (bytes32 r, bytes32 vs) =
            vm.signCompact(trackerKey, digestUnder("iotsettle", "1", block.chainid, address(billing), sh));
        _expectRejected(
            IDeliveryEscrow.SignedDelivery(id, 1, uint64(block.timestamp), DEST, 0, r, vs),
            IDeviceEvents.RejectReason.UnknownKey
        );
    }

    function test_RotatedAndRevokedTracker() public {
        uint256 newKey = deviceKey(43);
        rotate(tracker, newKey, owner);
        // Signed after the retirement: refused (signed before, it would count for the grace).
        vm.warp(vm.getBlockTimestamp() + 1);
        _expectRejected(_delivery(id, 0), IDeviceEvents.RejectReason.KeyRotated);
        uint256 e2 = _create(address(token), AMOUNT, 0, 0);
        _confirm(signDelivery(newKey, id, 1, uint64(vm.getBlockTimestamp()), DEST, 0));
        vm.prank(owner);
        registry.revoke(tracker);
        vm.warp(vm.getBlockTimestamp() + 1);
        _expectRejected(
            signDelivery(newKey, e2, 1, uint64(vm.getBlockTimestamp()), DEST, 0), IDeviceEvents.RejectReason.DeviceRevoked
        );
    }

    // ---------------------------------------------------------------- refund, cancel, withdraw

    function test_Refund_OnlyStrictlyAfterDeadlinePlusGrace() public {
        uint256 notBefore = deadline + escrow.SETTLEMENT_GRACE() + 1;
        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.TooEarly.selector, id, notBefore, deadline + 1));
        vm.prank(buyer);
        escrow.refund(id);
        vm.warp(notBefore - 1);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.TooEarly.selector, id, notBefore, notBefore - 1));
        vm.prank(buyer);
        escrow.refund(id);
        vm.warp(notBefore);
        vm.expectEmit(address(escrow));
        emit IDeliveryEscrow.EscrowRefunded(id, AMOUNT);
        vm.prank(buyer);
        escrow.refund(id);
        assertEq(escrow.withdrawable(address(token), buyer), AMOUNT);
        assertEq(uint8(escrow.escrowOf(id).state), uint8(IDeliveryEscrow.EscrowState.Refunded));
    }

    function test_RevertWhen_Refund_NotBuyerOrSettled() public {
        vm.warp(deadline + escrow.SETTLEMENT_GRACE() + 1);
        vm.expectRevert(abi.encodeWithSelector(IDeliveryEscrow.NotBuyer.selector, id, seller));
        vm.prank(seller);
        escrow.refund(id);
        vm.expectRevert(abi.encodeWithSelector(IDeliveryEscrow.UnknownEscrow.selector, id + 1));
        escrow.refund(id + 1);
        vm.startPrank(buyer);
        escrow.refund(id);
        vm.expectRevert(
            abi.encodeWithSelector(IDeliveryEscrow.NotFunded.selector, id, IDeliveryEscrow.EscrowState.Refunded)
        );
        escrow.refund(id);
        vm.stopPrank();
    }

    function test_RevertWhen_Refund_AfterRelease() public {
        _confirm(_delivery(id, 0));
        vm.warp(deadline + escrow.SETTLEMENT_GRACE() + 1);
        vm.expectRevert(
            abi.encodeWithSelector(IDeliveryEscrow.NotFunded.selector, id, IDeliveryEscrow.EscrowState.Released)
        );
        vm.prank(buyer);
        escrow.refund(id);
    }

    function test_Cancel_BySellerCreditsBuyer() public {
        vm.expectEmit(address(escrow));
        emit IDeliveryEscrow.EscrowCancelled(id, AMOUNT);
        vm.prank(seller);
        escrow.cancel(id);
        assertEq(escrow.withdrawable(address(token), buyer), AMOUNT);
        vm.expectRevert(
            abi.encodeWithSelector(IDeliveryEscrow.NotFunded.selector, id, IDeliveryEscrow.EscrowState.Cancelled)
        );
        vm.prank(seller);
        escrow.cancel(id);
    }

    function test_RevertWhen_Cancel_NotSeller() public {
        vm.expectRevert(abi.encodeWithSelector(IDeliveryEscrow.NotSeller.selector, id, buyer));
        vm.prank(buyer);
        escrow.cancel(id);
    }

    function test_RevertWhen_Withdraw_Nothing() public {
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.NothingToWithdraw.selector, address(token), seller));
        vm.prank(seller);
        escrow.withdraw(address(token));
    }

    function test_Withdraw_RevertingPayeeDoesNotBlockOthers() public {
        Payee badSeller = new Payee();
        badSeller.setMode(Payee.Mode.Revert);
        vm.deal(buyer, 2 ether);
        vm.startPrank(buyer);
        uint256 bad =
            escrow.createEscrow{value: 1 ether}(address(badSeller), tracker, address(0), 1 ether, DEST, deadline, 0, 0);
        uint256 good = escrow.createEscrow{value: 1 ether}(seller, tracker, address(0), 1 ether, DEST, deadline, 0, 0);
        vm.stopPrank();
        IDeliveryEscrow.SignedDelivery[] memory batch = new IDeliveryEscrow.SignedDelivery[](2);
        batch[0] = _delivery(bad, 0);
        batch[1] = _delivery(good, 0);
        vm.prank(relayer);
        assertEq(escrow.confirmDeliveries(batch), 2, "crediting never calls the payee");
        vm.prank(seller);
        escrow.withdraw(address(0));
        assertEq(seller.balance, 1 ether);
        vm.expectRevert(abi.encodeWithSelector(Payee.PayeeRefuses.selector));
        badSeller.exec(address(escrow), 0, abi.encodeCall(escrow.withdraw, (address(0))));
        assertEq(escrow.withdrawable(address(0), address(badSeller)), 1 ether, "kept for a later attempt");
    }

    function test_Withdraw_ReentrantPayeeGainsNothing() public {
        Payee evil = new Payee();
        vm.deal(buyer, 2 ether);
        vm.startPrank(buyer);
        uint256 a =
            escrow.createEscrow{value: 1 ether}(address(evil), tracker, address(0), 1 ether, DEST, deadline, 0, 0);
        escrow.createEscrow{value: 1 ether}(seller, tracker, address(0), 1 ether, DEST, deadline, 0, 0);
        vm.stopPrank();
        _confirm(_delivery(a, 0));
        evil.armReentry(address(escrow), abi.encodeCall(escrow.withdraw, (address(0))));
        evil.exec(address(escrow), 0, abi.encodeCall(escrow.withdraw, (address(0))));
        assertFalse(evil.reentrySucceeded());
        assertEq(address(evil).balance, 1 ether);
        assertEq(address(escrow).balance, 1 ether, "the other escrow's money is untouched");
    }

    function test_Withdraw_ReentrantTokenGainsNothing() public {
        ReentrantToken evil = new ReentrantToken();
        uint256 a = _create(address(evil), 100, 0, 0);
        _create(address(evil), 100, 0, 0);
        _confirm(_delivery(a, 0));
        evil.arm(address(escrow), abi.encodeCall(escrow.withdraw, (address(evil))));
        vm.prank(seller);
        escrow.withdraw(address(evil));
        assertTrue(evil.reentered());
        assertFalse(evil.reentrySucceeded());
        assertEq(evil.balanceOf(seller), 100);
        assertEq(evil.balanceOf(address(escrow)), 100);
    }

    function test_Withdraw_RevertingTokenOnlyBlocksItsOwnBalances() public {
        RevertingToken broken = new RevertingToken();
        uint256 a = _create(address(broken), 100, 0, 0);
        IDeliveryEscrow.SignedDelivery[] memory batch = new IDeliveryEscrow.SignedDelivery[](2);
        batch[0] = _delivery(a, 0);
        batch[1] = _delivery(id, 0);
        broken.setBroken(true);
        vm.prank(relayer);
        assertEq(escrow.confirmDeliveries(batch), 2);
        vm.startPrank(seller);
        vm.expectRevert(abi.encodeWithSelector(RevertingToken.TokenBroken.selector));
        escrow.withdraw(address(broken));
        escrow.withdraw(address(token));
        vm.stopPrank();
        assertEq(token.balanceOf(seller), AMOUNT);
    }

    function test_Withdraw_FalseReturningTokenKeepsTheCredit() public {
        FalseReturningToken liar = new FalseReturningToken();
        uint256 a = _create(address(liar), 100, 0, 0);
        _confirm(_delivery(a, 0));
        liar.setLying(true);
        vm.expectRevert(abi.encodeWithSelector(SafeERC20.SafeERC20FailedOperation.selector, address(liar)));
        vm.prank(seller);
        escrow.withdraw(address(liar));
        assertEq(escrow.withdrawable(address(liar), seller), 100);
    }

    // ---------------------------------------------------------------- relayers choose nothing

    /// @dev Issue scenario 5: a delivery signed before the deadline but relayed after it still pays the seller when
    /// the buyer races to refund the moment the deadline passes.
    function test_Scenario5_RefundRaceCannotEraseASignedDelivery() public {
        vm.warp(deadline - 10);
        IDeliveryEscrow.SignedDelivery memory signedInTime = _delivery(id, 0);
        vm.warp(deadline + 1);
        vm.prank(buyer);
        try escrow.refund(id) {} catch {}
        vm.warp(deadline + 30 minutes);
        vm.prank(relayer);
        escrow.confirmDeliveries(oneDelivery(signedInTime));
        assertEq(escrow.withdrawable(address(token), seller), AMOUNT, "the seller is paid for the delivery");
        assertEq(escrow.withdrawable(address(token), buyer), 0, "the buyer gets nothing back");
    }

    /// @dev Issue scenario 7c: of two signed deliveries of one escrow the first relayed releases it and the second
    /// is Replayed; the device SDK signs one delivery per escrow so there is never a second one to pick.
    function test_Scenario7c_FirstRelayedOfTwoSignedDeliveriesWins() public {
        IDeliveryEscrow.SignedDelivery memory cool = signDelivery(trackerKey, id, 1, uint64(block.timestamp), DEST, 0);
        IDeliveryEscrow.SignedDelivery memory warm =
            signDelivery(trackerKey, id, 2, uint64(block.timestamp), DEST, LIMIT + 1);
        IDeliveryEscrow.SignedDelivery[] memory both = new IDeliveryEscrow.SignedDelivery[](2);
        both[0] = warm;
        both[1] = cool;
        vm.expectEmit(address(escrow));
        emit IDeliveryEscrow.DeliveryRejected(id, 1, IDeviceEvents.RejectReason.Replayed);
        vm.prank(relayer);
        assertEq(escrow.confirmDeliveries(both), 1, "one release");
        assertEq(escrow.escrowOf(id).deliverySeq, 2, "the first relayed decided");
        assertEq(escrow.withdrawable(address(token), seller), AMOUNT * (10_000 - PENALTY) / 10_000);
        assertEq(escrow.withdrawable(address(token), buyer), AMOUNT * PENALTY / 10_000);
    }

    /// @dev Attacker review: a buyer who owns the tracker revoked it once the delivery was signed, so the seller's
    /// delivery, relayed inside the grace, was DeviceRevoked and the buyer refunded the whole escrow. A key retired
    /// after the event's timestamp still counts for SETTLEMENT_GRACE after the retirement.
    function test_Review_BuyerOwningTheTrackerRevokesAndRefundsASignedDelivery() public {
        uint256 key = deviceKey(920);
        address ownTracker = registerDevice(key, IDeviceRegistry.DeviceKind.Tracker, buyer);
        uint64 due = uint64(block.timestamp + 2 days);
        token.mint(buyer, 50_000);
        vm.startPrank(buyer);
        token.approve(address(escrow), 50_000);
        uint256 escrowId = escrow.createEscrow(seller, ownTracker, address(token), 50_000, DEST, due, 8, 0);
        vm.stopPrank();

        // Delivered and signed a day before the deadline; the buyer then revokes the tracker.
        vm.warp(block.timestamp + 1 days);
        IDeliveryEscrow.SignedDelivery memory d = signDelivery(key, escrowId, 1, uint64(block.timestamp), DEST, 4);
        vm.prank(buyer);
        registry.revoke(ownTracker);

        vm.prank(relayer);
        assertEq(escrow.confirmDeliveries(oneDelivery(d)), 1, "delivery signed before the revocation settles");
        assertEq(escrow.withdrawable(address(token), seller), 50_000, "the seller is paid");

        vm.warp(uint256(due) + escrow.SETTLEMENT_GRACE() + 1);
        vm.expectRevert(
            abi.encodeWithSelector(IDeliveryEscrow.NotFunded.selector, escrowId, IDeliveryEscrow.EscrowState.Released)
        );
        vm.prank(buyer);
        escrow.refund(escrowId);
        assertEq(escrow.withdrawable(address(token), buyer), 0, "the buyer gets nothing back");
    }
}

interface TestTokenLike {
    function mint(address to, uint256 amount) external;
    function approve(address spender, uint256 amount) external returns (bool);
}
