// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ICommonErrors} from "../../contracts/interfaces/ICommonErrors.sol";
import {IDeviceEvents} from "../../contracts/interfaces/IDeviceEvents.sol";
import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {IMeteredBilling} from "../../contracts/interfaces/IMeteredBilling.sol";
import {IOptimisticBilling} from "../../contracts/interfaces/IOptimisticBilling.sol";
import {IOptimisticBatches} from "../../contracts/interfaces/IOptimisticBatches.sol";
import {OptimisticBilling} from "../../contracts/OptimisticBilling.sol";
import {OptimisticFixture} from "./utils/OptimisticFixture.sol";

contract OptimisticBillingTest is OptimisticFixture {
    uint256 internal keyA = deviceKey(20);
    uint256 internal keyB = deviceKey(21);
    uint256 internal forgerKey = deviceKey(99);
    address internal meterA;
    address internal meterB;
    uint32 internal tariff;
    uint256 internal idA;
    uint256 internal idB;
    address internal challenger = makeAddr("challenger");
    address internal constant BURN_SINK = address(0xdEaD);

    uint64 internal constant START = 100;
    uint256 internal constant DEPOSIT = 100_000;

    function setUp() public override {
        super.setUp();
        meterA = registerDevice(keyA, IDeviceRegistry.DeviceKind.Meter, owner);
        meterB = registerDevice(keyB, IDeviceRegistry.DeviceKind.Meter, owner);
        tariff = tieredTariff();
        idA = openOptimistic(meterA, tariff, START, DEPOSIT);
        idB = openOptimistic(meterB, tariff, START, DEPOSIT);
        vm.warp(block.timestamp + 60);
    }

    function _a(uint64 seq, uint64 value) internal view returns (bytes memory) {
        return signItem(keyA, idA, seq, uint64(block.timestamp), value);
    }

    function _b(uint64 seq, uint64 value) internal view returns (bytes memory) {
        return signItem(keyB, idB, seq, uint64(block.timestamp), value);
    }

    function _cost(uint64 toValue) internal view returns (uint256) {
        return billing.costOf(tariff, 0, toValue - START);
    }

    /// @dev The attack shape every malicious-relayer test shares: `items[bad]` breaks `reason`. The challenge voids
    /// the batch and pays the bond to the challenger, no agreement changes, the batch can never be claimed, and the
    /// other items settle once posted again.
    function _caught(bytes[] memory items, uint256 bad, IDeviceEvents.RejectReason reason) internal {
        uint256 batchId = commitItems(items);
        bytes32[] memory ls = leaves(items);
        IMeteredBilling.Agreement memory a0 = opt.agreementOf(idA);
        IMeteredBilling.Agreement memory b0 = opt.agreementOf(idB);
        uint256 challengerBefore = challenger.balance;

        uint256 reward = BOND - BOND / 2;
        vm.expectEmit(address(opt));
        emit IOptimisticBatches.BatchVoided(batchId, challenger, ls[bad], reason, reward, BOND / 2);
        vm.prank(challenger);
        opt.challenge(batchId, items[bad], proofOf(ls, bad));

        assertEq(challenger.balance - challengerBefore, reward, "half the bond went to the challenger");
        assertEq(uint8(opt.batchOf(batchId).status), uint8(IOptimisticBatches.BatchStatus.Voided));
        assertEq(keccak256(abi.encode(opt.agreementOf(idA))), keccak256(abi.encode(a0)), "A unchanged");
        assertEq(keccak256(abi.encode(opt.agreementOf(idB))), keccak256(abi.encode(b0)), "B unchanged");

        afterWindow(batchId);
        for (uint256 i = 0; i < items.length; ++i) {
            vm.expectRevert(
                abi.encodeWithSelector(
                    IOptimisticBatches.BatchNotLive.selector, batchId, IOptimisticBatches.BatchStatus.Voided
                )
            );
            opt.claim(batchId, items[i], proofOf(ls, i));
        }
        vm.expectRevert(
            abi.encodeWithSelector(
                IOptimisticBatches.BatchNotLive.selector, batchId, IOptimisticBatches.BatchStatus.Voided
            )
        );
        opt.releaseBond(batchId);

        // The honest items, posted again, settle.
        bytes[] memory honest = new bytes[](items.length - 1);
        for (uint256 i = 0; i < items.length; ++i) {
            if (i != bad) honest[i < bad ? i : i - 1] = items[i];
        }
        uint256 again = commitItems(honest);
        afterWindow(again);
        for (uint256 i = 0; i < honest.length; ++i) {
            claimItem(again, honest, i);
        }
    }

    // ---------------------------------------------------------------- agreement ids

    /// @dev Both contracts mint `device << 96 | tariffId << 64 | count` with counts of their own: the same meter and
    /// tariff at the same count must still give two ids, or everything keyed by agreement id (the oracle's rollback
    /// and rate rules, its alerts) would mix two agreements.
    function testFuzz_Offer_IdsNeverCollideWithMeteredBilling(uint8 direct, uint8 optimistic) public {
        direct = uint8(bound(direct, 1, 12));
        optimistic = uint8(bound(optimistic, 1, 12));
        uint256[] memory directIds = new uint256[](direct);
        for (uint256 i = 0; i < direct; ++i) {
            vm.prank(provider);
            directIds[i] = billing.offer(consumer, meterA, tariff, address(token), START, 1 days);
        }
        for (uint256 i = 0; i < optimistic; ++i) {
            vm.prank(provider);
            uint256 id = opt.offer(consumer, meterA, tariff, address(token), START, 1 days);
            assertEq(id & opt.AGREEMENT_ID_FLAG(), opt.AGREEMENT_ID_FLAG(), "an optimistic id carries the flag");
            assertEq(opt.agreementOf(id).device, meterA, "the device is still the id's top 160 bits");
            assertEq(opt.agreementOf(id).tariffId, tariff, "the flag does not touch the tariff");
            for (uint256 j = 0; j < direct; ++j) {
                assertEq(directIds[j] & opt.AGREEMENT_ID_FLAG(), 0, "a direct id never carries it");
                assertTrue(id != directIds[j], "one id, one agreement");
            }
        }
    }

    function test_Challenge_ReadingOfAMeteredBillingAgreement_VoidsTheBatch() public {
        uint256 direct = openAgreement(meterA, tariff, START, DEPOSIT);
        assertEq(direct & ~opt.AGREEMENT_ID_FLAG(), idA & ~opt.AGREEMENT_ID_FLAG(), "the same meter, tariff and count");
        bytes memory stray = signItem(keyA, direct, 1, uint64(block.timestamp), 200);
        _caught(two(_a(1, 150), stray), 1, IDeviceEvents.RejectReason.UnknownTarget);
    }

    // ---------------------------------------------------------------- the happy path

    function test_Claim_AfterWindow_BillsTheDeltaSinceTheLastClaim() public {
        bytes[] memory items = three(_a(1, 150), _a(2, 180), _b(1, 400));
        uint256 batchId = commitItems(items);
        afterWindow(batchId);

        claimItem(batchId, items, 1);
        claimItem(batchId, items, 2);
        assertEq(opt.earningsOf(idA), _cost(180), "A billed up to its newest reading, once");
        assertEq(opt.earningsOf(idB), _cost(400));
        assertEq(opt.agreementOf(idA).lastSeq, 2);

        // The older leaf of A cannot bill again: claims only move forward.
        vm.expectRevert(
            abi.encodeWithSelector(IDeviceEvents.EventRejected.selector, idA, 1, IDeviceEvents.RejectReason.Replayed)
        );
        claimItem(batchId, items, 0);

        // A newer reading in a later batch bills only the delta.
        bytes[] memory next = one(_a(3, 260));
        uint256 later = commitItems(next);
        afterWindow(later);
        claimItem(later, next, 0);
        assertEq(opt.earningsOf(idA), _cost(260));
        assertEq(opt.agreementOf(idA).prepaid, DEPOSIT - _cost(260), "billed <= deposited");
    }

    function test_ReleaseBond_AfterWindow_PaysTheRelayer() public {
        uint256 batchId = commitItems(one(_a(1, 150)));
        vm.expectRevert(
            abi.encodeWithSelector(
                IOptimisticBatches.ChallengeWindowOpen.selector, batchId, block.timestamp + opt.CHALLENGE_WINDOW()
            )
        );
        opt.releaseBond(batchId);
        afterWindow(batchId);
        uint256 before = relayer.balance;
        opt.releaseBond(batchId);
        assertEq(relayer.balance - before, opt.BOND());
        assertEq(address(opt).balance, 0, "no bond left behind");
        vm.expectRevert(
            abi.encodeWithSelector(
                IOptimisticBatches.BatchNotLive.selector, batchId, IOptimisticBatches.BatchStatus.Released
            )
        );
        opt.releaseBond(batchId);
    }

    function test_RevertWhen_CommitWithoutTheBondOrWithARaggedBatch() public {
        bytes memory data = pack(one(_a(1, 150)));
        assertEq(data.length, 7 + 32 + 82, "a header, a table of one agreement and one item");
        vm.prank(relayer);
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBatches.WrongBond.selector, opt.BOND(), 1));
        opt.commit{value: 1}(bytes32(0), data);
        uint256 bond = opt.BOND();
        vm.prank(relayer);
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBilling.MalformedBatch.selector, 122));
        opt.commit{value: bond}(bytes32(0), bytes.concat(data, bytes1(0)));
        vm.prank(relayer);
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBilling.MalformedBatch.selector, 0));
        opt.commit{value: bond}(bytes32(0), "");
        // A table without items, and items without a table.
        vm.prank(relayer);
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBilling.MalformedBatch.selector, 39));
        opt.commit{value: bond}(bytes32(0), bytes.concat(bytes2(uint16(1)), bytes5(0), bytes32(idA)));
        vm.prank(relayer);
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBilling.MalformedBatch.selector, 89));
        opt.commit{value: bond}(bytes32(0), bytes.concat(bytes2(0), bytes5(0), new bytes(82)));
    }

    function test_RevertWhen_CommitBeyondTheLargestBatch() public {
        uint256 max = opt.MAX_BATCH_READINGS();
        bytes memory data = bytes.concat(bytes2(uint16(1)), bytes5(0), bytes32(idA), new bytes((max + 1) * 82));
        uint256 bond = opt.BOND();
        vm.prank(relayer);
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBatches.BatchTooLarge.selector, max + 1, max));
        opt.commit{value: bond}(bytes32(0), data);
    }

    /// @dev An item pointing past the agreement table builds no root: the data challenge voids the batch whatever
    /// root was committed.
    function test_ChallengeData_IndexPastTheTable_VoidsTheBatch() public {
        bytes[] memory items = two(_a(1, 150), _b(1, 400));
        bytes memory data = pack(items);
        data[7 + 64 + 82 + 1] = bytes1(uint8(2)); // the second item's index: 2 of a table of 2
        uint256 bond = opt.BOND();
        vm.prank(relayer);
        uint256 batchId = opt.commit{value: bond}(rootOf(leaves(items)), data);
        vm.expectEmit(address(opt));
        emit IOptimisticBatches.BatchVoided(
            batchId, challenger, bytes32(0), IDeviceEvents.RejectReason.None, bond - bond / 2, bond / 2
        );
        vm.prank(challenger);
        opt.challengeData(batchId, data);
    }

    // ---------------------------------------------------------------- deployment

    function test_Deploy_TakesTheWindowAndTheBondItIsGiven() public {
        OptimisticBilling other = new OptimisticBilling(registry, billing, 6 hours, 2 ether);
        assertEq(other.CHALLENGE_WINDOW(), 6 hours);
        assertEq(other.BOND(), 2 ether);
        assertEq(other.closeDelay(), 2 * other.SETTLEMENT_GRACE() + 6 hours, "a close waits for the window");
    }

    function test_RevertWhen_DeployWithAWindowOutOfBoundsOrNoBond() public {
        uint64 min = opt.MIN_CHALLENGE_WINDOW();
        uint64 max = opt.MAX_CHALLENGE_WINDOW();
        vm.expectRevert(
            abi.encodeWithSelector(IOptimisticBatches.ChallengeWindowOutOfRange.selector, min - 1, min, max)
        );
        new OptimisticBilling(registry, billing, min - 1, 1);
        vm.expectRevert(
            abi.encodeWithSelector(IOptimisticBatches.ChallengeWindowOutOfRange.selector, max + 1, min, max)
        );
        new OptimisticBilling(registry, billing, max + 1, 1);
        vm.expectRevert(ICommonErrors.ZeroAmount.selector);
        new OptimisticBilling(registry, billing, min, 0);
        OptimisticBilling edge = new OptimisticBilling(registry, billing, min, 1);
        assertEq(edge.CHALLENGE_WINDOW(), min, "the bounds themselves are allowed");
    }

    // ---------------------------------------------------------------- a malicious relayer is caught

    function test_Challenge_ForgedSignature_VoidsTheBatch() public {
        bytes memory forged = signItem(forgerKey, idA, 2, uint64(block.timestamp), 90_000);
        _caught(three(_a(1, 150), forged, _b(1, 400)), 1, IDeviceEvents.RejectReason.UnknownKey);
        assertEq(opt.earningsOf(idA), _cost(150), "only the honest reading billed");
        assertEq(opt.earningsOf(idB), _cost(400));
    }

    function test_Challenge_AnotherDevicesKey_VoidsTheBatch() public {
        bytes memory forged = signItem(keyB, idA, 2, uint64(block.timestamp), 90_000);
        _caught(two(_a(1, 150), forged), 1, IDeviceEvents.RejectReason.WrongDevice);
        assertEq(opt.earningsOf(idA), _cost(150));
    }

    function test_Challenge_RevokedKey_VoidsTheBatch() public {
        vm.prank(owner);
        registry.revoke(meterB);
        vm.warp(block.timestamp + 5);
        // Dated after the revocation: direct settlement would refuse it with DeviceRevoked.
        _caught(two(_a(1, 150), _b(1, 400)), 1, IDeviceEvents.RejectReason.DeviceRevoked);
        assertEq(opt.earningsOf(idA), _cost(150));
        assertEq(opt.earningsOf(idB), 0);
    }

    function test_Challenge_RotatedKeyRelayedAfterTheGrace_VoidsTheBatch() public {
        bytes memory old = _b(1, 400);
        rotate(meterB, deviceKey(22), owner);
        vm.warp(block.timestamp + SETTLEMENT_GRACE_() + 1);
        _caught(two(_a(1, 150), old), 1, IDeviceEvents.RejectReason.KeyRotated);
    }

    function test_Challenge_ReplayedSeq_VoidsTheBatch() public {
        bytes memory first = _a(1, 150);
        uint256 batchId = commitItems(one(first));
        afterWindow(batchId);
        claimItem(batchId, one(first), 0);
        vm.warp(block.timestamp + 1);
        _caught(two(_b(1, 400), first), 1, IDeviceEvents.RejectReason.Replayed);
        assertEq(opt.earningsOf(idA), _cost(150), "the replay billed nothing");
        assertEq(opt.earningsOf(idB), _cost(400));
    }

    function test_Challenge_RolledBackRegister_VoidsTheBatch() public {
        bytes memory first = _a(1, 150);
        uint256 batchId = commitItems(one(first));
        afterWindow(batchId);
        claimItem(batchId, one(first), 0);
        vm.warp(block.timestamp + 1);
        // The device itself signed a register below the claimed one.
        _caught(two(_a(2, 140), _b(1, 400)), 0, IDeviceEvents.RejectReason.CounterRollback);
        assertEq(opt.agreementOf(idA).lastValue, 150);
    }

    function test_Challenge_TimestampBeyondTheSkew_VoidsTheBatch() public {
        bytes memory future = signItem(keyA, idA, 2, uint64(block.timestamp + 301), 200);
        _caught(two(_a(1, 150), future), 1, IDeviceEvents.RejectReason.TimestampInFuture);
    }

    function test_Challenge_UnknownAgreement_VoidsTheBatch() public {
        bytes memory stray = signItem(keyA, idA + 1_000, 1, uint64(block.timestamp), 200);
        _caught(two(_a(1, 150), stray), 1, IDeviceEvents.RejectReason.UnknownTarget);
    }

    function test_ChallengeData_RootNotBuiltFromTheData_VoidsTheBatch() public {
        bytes[] memory shown = two(_a(1, 150), _b(1, 400));
        bytes[] memory hidden = two(_a(1, 150), signItem(forgerKey, idB, 1, uint64(block.timestamp), 90_000));
        uint256 bond = opt.BOND();
        vm.prank(relayer);
        uint256 batchId = opt.commit{value: bond}(rootOf(leaves(hidden)), pack(shown));

        vm.expectRevert(
            abi.encodeWithSelector(IOptimisticBatches.NotBatchData.selector, batchId, keccak256(pack(hidden)))
        );
        opt.challengeData(batchId, pack(hidden));

        vm.expectEmit(address(opt));
        emit IOptimisticBatches.BatchVoided(
            batchId, challenger, bytes32(0), IDeviceEvents.RejectReason.None, bond - bond / 2, bond / 2
        );
        vm.prank(challenger);
        opt.challengeData(batchId, pack(shown));
        assertEq(challenger.balance, bond - bond / 2);
    }

    /// @dev The relayer challenges its own forged batch before any watcher does: it must not get its bond back, or
    /// lying would cost it only gas. Half the bond is burnt (sent to the sink), half pays the challenger (itself).
    function test_Challenge_RelayerChallengingItsOwnBatch_LosesHalfTheBond() public {
        bytes memory forged = signItem(forgerKey, idA, 2, uint64(block.timestamp), 90_000);
        bytes[] memory items = two(_a(1, 150), forged);
        uint256 bond = opt.BOND();
        uint256 before = relayer.balance;
        uint256 sunk = BURN_SINK.balance;
        uint256 batchId = commitItems(items);
        bytes32[] memory ls = leaves(items);

        vm.prank(relayer);
        opt.challenge(batchId, forged, proofOf(ls, 1));

        assertEq(uint8(opt.batchOf(batchId).status), uint8(IOptimisticBatches.BatchStatus.Voided));
        assertEq(before - relayer.balance, bond / 2, "lying cost the relayer half its bond");
        assertEq(BURN_SINK.balance - sunk, bond / 2, "burnt");
        assertEq(opt.withdrawable(address(0), relayer), 0, "no credit left to pull back");
        assertEq(address(opt).balance, 0, "nothing kept");
    }

    // ---------------------------------------------------------------- challenges that prove nothing

    function test_Challenge_ValidLeaf_ChangesNothing() public {
        bytes[] memory items = two(_a(1, 150), _b(1, 400));
        uint256 batchId = commitItems(items);
        bytes32[] memory ls = leaves(items);
        vm.prank(challenger);
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBatches.NothingProven.selector, batchId, ls[0]));
        opt.challenge(batchId, items[0], proofOf(ls, 0));
        vm.prank(challenger);
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBatches.NothingProven.selector, batchId, bytes32(0)));
        opt.challengeData(batchId, pack(items));
        assertEq(uint8(opt.batchOf(batchId).status), uint8(IOptimisticBatches.BatchStatus.Committed));
        assertEq(address(opt).balance, opt.BOND(), "the bond stays");
    }

    function test_Challenge_WrongProof_ChangesNothing() public {
        bytes memory forged = signItem(forgerKey, idA, 2, uint64(block.timestamp), 90_000);
        bytes[] memory items = three(_a(1, 150), forged, _b(1, 400));
        uint256 batchId = commitItems(items);
        bytes32[] memory ls = leaves(items);
        vm.prank(challenger);
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBatches.NotInBatch.selector, batchId, ls[1]));
        opt.challenge(batchId, forged, proofOf(ls, 0));
        // A bad leaf that is not in the batch proves nothing about it either.
        bytes memory outside = signItem(forgerKey, idB, 7, uint64(block.timestamp), 1);
        vm.prank(challenger);
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBatches.NotInBatch.selector, batchId, opt.leafOf(outside)));
        opt.challenge(batchId, outside, proofOf(ls, 1));
        assertEq(uint8(opt.batchOf(batchId).status), uint8(IOptimisticBatches.BatchStatus.Committed));
    }

    function test_Challenge_AfterTheWindow_ChangesNothing() public {
        bytes memory forged = signItem(forgerKey, idA, 2, uint64(block.timestamp), 90_000);
        bytes[] memory items = two(_a(1, 150), forged);
        uint256 batchId = commitItems(items);
        uint256 endsAt = block.timestamp + opt.CHALLENGE_WINDOW();
        afterWindow(batchId);
        vm.prank(challenger);
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBatches.ChallengeWindowClosed.selector, batchId, endsAt));
        opt.challenge(batchId, forged, proofOf(leaves(items), 1));
        assertEq(challenger.balance, 0);
        assertEq(uint8(opt.batchOf(batchId).status), uint8(IOptimisticBatches.BatchStatus.Committed));
    }

    /// @dev A key revoked after the commit, the challenge coming after the grace: the leaf was valid when relayed.
    function test_Challenge_KeyRetiredAfterTheCommit_ProvesNothing() public {
        bytes[] memory items = one(_b(1, 400));
        uint256 batchId = commitItems(items);
        vm.warp(block.timestamp + 10);
        vm.prank(owner);
        registry.revoke(meterB);
        vm.warp(block.timestamp + opt.CHALLENGE_WINDOW() - 20);
        bytes32[] memory ls = leaves(items);
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBatches.NothingProven.selector, batchId, ls[0]));
        opt.challenge(batchId, items[0], proofOf(ls, 0));
        afterWindow(batchId);
        claimItem(batchId, items, 0);
        assertEq(opt.earningsOf(idB), _cost(400));
    }

    /// @dev A reading dated a little ahead of the chain (device clock skew) and a key revoked after the commit but
    /// before that date: the key was current when the leaf was relayed, so the owner cannot take the bond by revoking.
    function test_Challenge_KeyRevokedAfterTheCommitBeforeTheReadingsDate_ProvesNothing() public {
        bytes[] memory items = one(signItem(keyB, idB, 1, uint64(block.timestamp + 200), 400));
        uint256 batchId = commitItems(items);
        vm.warp(block.timestamp + 10);
        vm.prank(owner);
        registry.revoke(meterB);
        bytes32[] memory ls = leaves(items);
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBatches.NothingProven.selector, batchId, ls[0]));
        opt.challenge(batchId, items[0], proofOf(ls, 0));
    }

    /// @dev A reading that was new when committed is not slashable because a claim from another batch overtook
    /// it: only claims before the commit count. Claiming it afterwards is refused instead.
    function test_Challenge_ReadingOvertakenAfterTheCommit_ProvesNothing() public {
        bytes[] memory first = one(_a(2, 200));
        uint256 b1 = commitItems(first);
        vm.warp(block.timestamp + 30 minutes);
        bytes[] memory second = one(_a(1, 150));
        uint256 b2 = commitItems(second);
        afterWindow(b1);
        claimItem(b1, first, 0);
        bytes32[] memory ls = leaves(second);
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBatches.NothingProven.selector, b2, ls[0]));
        opt.challenge(b2, second[0], proofOf(ls, 0));
        afterWindow(b2);
        vm.expectRevert(
            abi.encodeWithSelector(IDeviceEvents.EventRejected.selector, idA, 1, IDeviceEvents.RejectReason.Replayed)
        );
        claimItem(b2, second, 0);
        assertEq(opt.earningsOf(idA), _cost(200));
    }

    // ---------------------------------------------------------------- claims

    function test_RevertWhen_ClaimInsideTheWindow() public {
        bytes[] memory items = one(_a(1, 150));
        uint256 batchId = commitItems(items);
        vm.warp(block.timestamp + opt.CHALLENGE_WINDOW());
        vm.expectRevert(
            abi.encodeWithSelector(IOptimisticBatches.ChallengeWindowOpen.selector, batchId, block.timestamp)
        );
        claimItem(batchId, items, 0);
    }

    function test_Claim_DepositRunsShort_SuspendsWithArrears() public {
        bytes[] memory items = one(_a(1, 100 + 30_000));
        uint256 batchId = commitItems(items);
        afterWindow(batchId);
        claimItem(batchId, items, 0);
        IMeteredBilling.Agreement memory a = opt.agreementOf(idA);
        assertEq(a.prepaid, 0);
        assertEq(a.arrears, _cost(100 + 30_000) - DEPOSIT);
        assertEq(uint8(a.status), uint8(IMeteredBilling.AgreementStatus.Suspended));
        assertEq(opt.earningsOf(idA), DEPOSIT, "billed <= deposited");

        bytes[] memory next = one(_a(2, 100 + 30_001));
        uint256 later = commitItems(next);
        afterWindow(later);
        vm.expectRevert(
            abi.encodeWithSelector(IDeviceEvents.EventRejected.selector, idA, 2, IDeviceEvents.RejectReason.Suspended)
        );
        claimItem(later, next, 0);
    }

    // ---------------------------------------------------------------- closing

    function test_Close_WaitsForTheWindowAndAClaimGrace() public {
        vm.prank(consumer);
        opt.requestClose(idA);
        uint256 closeAt = opt.agreementOf(idA).closeAt;
        vm.warp(closeAt);
        bytes memory last = _a(1, 150);
        bytes memory late = signItem(keyA, idA, 2, uint64(closeAt + 1), 170);
        // Relayed at the end of the grace: its window and one more grace still come before the close.
        vm.warp(closeAt + SETTLEMENT_GRACE_());
        bytes[] memory items = two(last, late);
        uint256 batchId = commitItems(items);
        afterWindow(batchId);
        uint256 notBefore = closeAt + opt.closeDelay() + 1;
        vm.prank(consumer);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.TooEarly.selector, idA, notBefore, block.timestamp));
        opt.close(idA);

        vm.expectRevert(
            abi.encodeWithSelector(IDeviceEvents.EventRejected.selector, idA, 2, IDeviceEvents.RejectReason.AfterEnd)
        );
        claimItem(batchId, items, 1);
        claimItem(batchId, items, 0);

        vm.warp(notBefore);
        uint256 before = token.balanceOf(consumer);
        vm.prank(consumer);
        assertEq(opt.close(idA), DEPOSIT - _cost(150));
        assertEq(token.balanceOf(consumer) - before, DEPOSIT - _cost(150));
        vm.prank(provider);
        opt.withdrawEarnings(idA);
        assertEq(token.balanceOf(provider), _cost(150));
        assertEq(token.balanceOf(address(opt)), DEPOSIT, "only B's deposit is left");
    }

    function SETTLEMENT_GRACE_() internal view returns (uint256) {
        return opt.SETTLEMENT_GRACE();
    }
}
