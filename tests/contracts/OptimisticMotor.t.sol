// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ICommonErrors} from "../../contracts/interfaces/ICommonErrors.sol";
import {IDeviceEvents} from "../../contracts/interfaces/IDeviceEvents.sol";
import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {IMotorInsurance} from "../../contracts/interfaces/IMotorInsurance.sol";
import {IOptimisticBatches} from "../../contracts/interfaces/IOptimisticBatches.sol";
import {IOptimisticMotor} from "../../contracts/interfaces/IOptimisticMotor.sol";
import {OptimisticMotor} from "../../contracts/OptimisticMotor.sol";
import {BatchTree} from "./utils/BatchTree.sol";
import {MotorFixture} from "./utils/MotorFixture.sol";
import {PackedReports} from "./utils/PackedReports.sol";

/// @dev Optimistic motor policies: the attacks a relayer can try on a batch (forged signature, a revoked key's
/// report, a replayed seq, a rolled-back register) are each voided by a challenge that pays the challenger, moves
/// no money and lets the honest reports settle once posted again; a claim charges what direct settlement charges.
contract OptimisticMotorTest is MotorFixture {
    uint64 internal constant WINDOW = 1 hours;
    uint256 internal constant BOND = 0.1 ether;
    uint256 internal constant DEPOSIT = 1_000_000 ether;
    uint128 internal constant RATE = 0.01 ether;

    OptimisticMotor internal om;
    uint256 internal keyA = deviceKey(40);
    uint256 internal keyB = deviceKey(41);
    uint256 internal forgerKey = deviceKey(99);
    address internal carA;
    address internal carB;
    uint256 internal idA;
    uint256 internal idB;
    address internal challenger = makeAddr("challenger");

    function setUp() public override {
        super.setUp();
        om = new OptimisticMotor(registry, WINDOW, BOND);
        vm.deal(relayer, 1_000 ether);
        carA = registerVehicle(keyA);
        carB = registerVehicle(keyB);
        idA = _open(om, carA);
        idB = _open(om, carB);
        vm.warp(block.timestamp + 60);
    }

    // ---------------------------------------------------------------- helpers

    function _open(IMotorInsurance m, address vehicle) internal returns (uint256 id) {
        vm.prank(insurer);
        if (address(m) == address(om)) {
            id = om.offer(holder, vehicle, address(token), RATE, 10_000, 30_000, 500, 1_000, 0, 0, 1 days);
        } else {
            id = m.offer(holder, vehicle, address(token), RATE, 10_000, 30_000, 500, 1_000, 0, 0, 1 days);
        }
        token.mint(holder, DEPOSIT);
        vm.startPrank(holder);
        token.approve(address(m), DEPOSIT);
        m.accept(id, DEPOSIT, 1_000, 0, 0);
        vm.stopPrank();
    }

    /// @dev A report signed for `m` with `key`, packed as `settle`, a claim and a challenge carry it (174 bytes).
    function _report(IMotorInsurance m, uint256 key, uint256 id, uint64 seq, uint64 odometer, uint32 harsh)
        internal
        view
        returns (bytes memory)
    {
        uint64 time = uint64(vm.getBlockTimestamp());
        (bytes32 r, bytes32 vs) = vm.signCompact(key, m.hashTelematics(id, seq, time, odometer, harsh, 0));
        IMotorInsurance.SignedTelematics memory t =
            IMotorInsurance.SignedTelematics(id, seq, time, odometer, harsh, 0, r, vs);
        bytes memory terms = new bytes(46);
        try m.telematicsTerms(id) returns (bytes memory current) {
            terms = current;
        } catch {}
        return PackedReports.item(t, terms);
    }

    function _a(uint64 seq, uint64 odometer) internal view returns (bytes memory) {
        return _report(om, keyA, idA, seq, odometer, 0);
    }

    function _b(uint64 seq, uint64 odometer) internal view returns (bytes memory) {
        return _report(om, keyB, idB, seq, odometer, 0);
    }

    function _leaves(bytes[] memory items) internal view returns (bytes32[] memory ls) {
        ls = new bytes32[](items.length);
        for (uint256 i = 0; i < items.length; ++i) {
            ls[i] = om.leafOf(items[i]);
        }
    }

    function _commit(bytes[] memory items) internal returns (uint256 batchId) {
        bytes32 root = BatchTree.root(_leaves(items));
        bytes memory data = BatchTree.packReports(items);
        vm.prank(relayer);
        batchId = om.commit{value: BOND}(root, data);
    }

    function _claim(uint256 batchId, bytes[] memory items, uint256 index) internal {
        om.claim(batchId, items[index], BatchTree.proof(_leaves(items), index));
    }

    function _afterWindow(uint256 batchId) internal {
        vm.warp(uint256(om.batchOf(batchId).committedAt) + WINDOW + 1);
    }

    function _two(bytes memory a, bytes memory b) internal pure returns (bytes[] memory items) {
        items = new bytes[](2);
        items[0] = a;
        items[1] = b;
    }

    function _policyHash(uint256 id) internal view returns (bytes32) {
        return keccak256(abi.encode(om.policyOf(id)));
    }

    /// @dev `items[bad]` breaks `reason`: the challenge voids the batch, pays half the bond to the challenger and
    /// burns half, no policy changes, nothing of the batch can be claimed, and the honest report, posted again,
    /// settles.
    function _caught(bytes[] memory items, uint256 bad, IDeviceEvents.RejectReason reason) internal {
        uint256 batchId = _commit(items);
        bytes32[] memory ls = _leaves(items);
        (bytes32 a0, bytes32 b0) = (_policyHash(idA), _policyHash(idB));
        uint256 before = challenger.balance;

        vm.expectEmit(address(om));
        emit IOptimisticBatches.BatchVoided(batchId, challenger, ls[bad], reason, BOND - BOND / 2, BOND / 2);
        vm.prank(challenger);
        om.challenge(batchId, items[bad], BatchTree.proof(ls, bad));

        assertEq(challenger.balance - before, BOND - BOND / 2, "half the bond went to the challenger");
        assertEq(address(0xdEaD).balance, BOND / 2, "half was burnt");
        assertEq(_policyHash(idA), a0, "A unchanged");
        assertEq(_policyHash(idB), b0, "B unchanged");
        _afterWindow(batchId);
        vm.expectRevert(
            abi.encodeWithSelector(
                IOptimisticBatches.BatchNotLive.selector, batchId, IOptimisticBatches.BatchStatus.Voided
            )
        );
        om.claim(batchId, items[1 - bad], BatchTree.proof(ls, 1 - bad));

        bytes[] memory honest = new bytes[](1);
        honest[0] = items[1 - bad];
        uint256 again = _commit(honest);
        _afterWindow(again);
        _claim(again, honest, 0);
        assertGt(om.policyOf(idB).charged, 0, "the honest report settled");
    }

    // ---------------------------------------------------------------- the mode

    function test_Offer_IdsCarryTheFlagAndNeverEqualADirectPolicys() public {
        uint256 direct = _open(motor, carA);
        assertEq(idA & om.POLICY_ID_FLAG(), om.POLICY_ID_FLAG(), "an optimistic id carries the flag");
        assertEq(direct & om.POLICY_ID_FLAG(), 0, "a direct one does not");
        assertEq(direct & ~om.POLICY_ID_FLAG(), idA & ~om.POLICY_ID_FLAG(), "the same vehicle and count");
        assertEq(om.policyOf(idA).vehicle, carA, "the vehicle is still the id's top 160 bits");
    }

    function test_Settle_IsRefused_AReportSettledOutsideTheBatchesWouldLetAnHonestBatchLookReplayed() public {
        bytes memory one = _a(1, 2_000);
        vm.expectRevert(IOptimisticMotor.SettledByClaims.selector);
        om.settle(one);
    }

    function test_Claim_ChargesWhatDirectSettlementCharges() public {
        uint256 direct = _open(motor, carB);
        bytes[] memory items = _two(_a(1, 51_000), _a(2, 121_000));
        uint256 batchId = _commit(items);
        // the same registers reported for the direct policy, settled at once
        motor.settle(abi.encodePacked(_report(motor, keyB, direct, 2, 121_000, 0)));

        bytes32[] memory proof = BatchTree.proof(_leaves(items), 1);
        uint256 endsAt = om.batchOf(batchId).committedAt + WINDOW;
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBatches.ChallengeWindowOpen.selector, batchId, endsAt));
        om.claim(batchId, items[1], proof);
        _afterWindow(batchId);
        vm.expectEmit(address(om));
        emit IOptimisticMotor.ReportClaimed(idA, batchId, 2);
        _claim(batchId, items, 1);
        assertEq(om.policyOf(idA).charged, motor.policyOf(direct).charged, "the same premium");
        assertEq(om.policyOf(idA).charged, 120 * RATE, "120 km at factor 1.0");
        assertEq(om.policyOf(idA).lastSeq, 2);
        // the older report of the same batch can no longer move the policy
        proof = BatchTree.proof(_leaves(items), 0);
        vm.expectRevert(
            abi.encodeWithSelector(IDeviceEvents.EventRejected.selector, idA, 1, IDeviceEvents.RejectReason.Replayed)
        );
        om.claim(batchId, items[0], proof);
        uint256 relayerBefore = relayer.balance;
        om.releaseBond(batchId);
        assertEq(relayer.balance - relayerBefore, BOND, "the bond went back");
    }

    function test_Close_WaitsForTheWindowOfABatchCommittedAtTheEnd() public {
        vm.prank(holder);
        om.requestClose(idA);
        uint256 closeAt = om.policyOf(idA).closeAt;
        uint256 delay = om.closeDelay(idA);
        assertEq(delay, 2 * uint256(om.SETTLEMENT_GRACE()) + WINDOW);
        vm.warp(closeAt + delay);
        vm.expectRevert(
            abi.encodeWithSelector(ICommonErrors.TooEarly.selector, idA, closeAt + delay + 1, closeAt + delay)
        );
        om.close(idA);
        vm.warp(closeAt + delay + 1);
        om.close(idA);
        assertEq(uint8(om.policyOf(idA).status), uint8(IMotorInsurance.PolicyStatus.Closed));
    }

    // ---------------------------------------------------------------- a malicious relayer

    function test_Attack_ForgedSignature_ChallengeWins() public {
        bytes memory forged = _report(om, forgerKey, idA, 1, 900_000, 0);
        _caught(_two(forged, _b(1, 3_000)), 0, IDeviceEvents.RejectReason.UnknownKey);
    }

    /// @dev Signed after the revocation (one signed by then and committed within the grace is valid, as direct
    /// settlement would take it).
    function test_Attack_RevokedKeysReport_ChallengeWins() public {
        vm.prank(owner);
        registry.revoke(carA);
        vm.warp(block.timestamp + 60);
        _caught(_two(_a(1, 5_000), _b(1, 3_000)), 0, IDeviceEvents.RejectReason.DeviceRevoked);
    }

    function test_Attack_ReplayedSeq_ChallengeWins() public {
        bytes[] memory first = new bytes[](1);
        first[0] = _a(2, 5_000);
        uint256 batchId = _commit(first);
        _afterWindow(batchId);
        _claim(batchId, first, 0);
        vm.warp(block.timestamp + 60);
        _caught(_two(_a(2, 7_000), _b(1, 3_000)), 0, IDeviceEvents.RejectReason.Replayed);
    }

    function test_Attack_RolledBackRegister_ChallengeWins() public {
        bytes[] memory first = new bytes[](1);
        first[0] = _a(1, 9_000);
        uint256 batchId = _commit(first);
        _afterWindow(batchId);
        _claim(batchId, first, 0);
        vm.warp(block.timestamp + 60);
        _caught(_two(_a(2, 8_000), _b(1, 3_000)), 0, IDeviceEvents.RejectReason.CounterRollback);
    }

    function test_Challenge_OfAValidLeaf_AfterTheWindow_OrWithAWrongProof_ChangesNothing() public {
        bytes[] memory items = _two(_a(1, 5_000), _b(1, 3_000));
        uint256 batchId = _commit(items);
        bytes32[] memory ls = _leaves(items);
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBatches.NothingProven.selector, batchId, ls[0]));
        om.challenge(batchId, items[0], BatchTree.proof(ls, 0));
        bytes32[] memory wrong = new bytes32[](1);
        wrong[0] = bytes32(uint256(1));
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBatches.NotInBatch.selector, batchId, ls[0]));
        om.challenge(batchId, items[0], wrong);
        _afterWindow(batchId);
        bytes memory forged = _report(om, forgerKey, idA, 3, 9_000, 0);
        vm.expectRevert(
            abi.encodeWithSelector(
                IOptimisticBatches.ChallengeWindowClosed.selector, batchId, om.batchOf(batchId).committedAt + WINDOW
            )
        );
        om.challenge(batchId, forged, BatchTree.proof(ls, 0));
        assertEq(uint8(om.batchOf(batchId).status), uint8(IOptimisticBatches.BatchStatus.Committed));
    }

    /// @dev A claim made after a commit must not make that commit's reports slashable: they were valid when posted.
    function test_Challenge_AClaimAfterTheCommitProvesNothingAgainstIt() public {
        bytes[] memory newer = new bytes[](1);
        newer[0] = _a(2, 7_000);
        uint256 first = _commit(newer);
        vm.warp(block.timestamp + WINDOW / 2);
        bytes[] memory older = _two(_a(1, 6_000), _b(1, 3_000));
        uint256 second = _commit(older);
        _afterWindow(first);
        _claim(first, newer, 0);
        bytes32[] memory ls = _leaves(older);
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBatches.NothingProven.selector, second, ls[0]));
        om.challenge(second, older[0], BatchTree.proof(ls, 0));
        _afterWindow(second);
        _claim(second, older, 1);
        assertEq(om.policyOf(idA).lastSeq, 2, "the older report changes nothing");
    }

    function test_ChallengeData_AnItemPastThePolicyTable_Voids() public {
        bytes[] memory items = _two(_a(1, 5_000), _b(1, 3_000));
        bytes memory data = BatchTree.packReports(items);
        data[7 + 64 + 1] = 0x05; // the first item's table index → 5 of 2
        vm.prank(relayer);
        uint256 batchId = om.commit{value: BOND}(BatchTree.root(_leaves(items)), data);
        vm.prank(challenger);
        om.challengeData(batchId, data);
        assertEq(uint8(om.batchOf(batchId).status), uint8(IOptimisticBatches.BatchStatus.Voided));
    }

    function test_ChallengeData_OfAnHonestBatch_ProvesNothing() public {
        bytes[] memory items = _two(_a(1, 5_000), _b(1, 3_000));
        uint256 batchId = _commit(items);
        bytes memory data = BatchTree.packReports(items);
        vm.expectRevert(abi.encodeWithSelector(IOptimisticBatches.NothingProven.selector, batchId, bytes32(0)));
        om.challengeData(batchId, data);
    }

    // ---------------------------------------------------------------- the relayer chooses nothing

    /// @dev Whatever subset of a vehicle's signed reports an adversary commits, however it splits and orders them into
    /// two batches, and in whatever order the leaves are claimed, once the newest report is committed and claimed
    /// (withholding it only delays) the premium equals direct settlement of the same reports.
    function testFuzz_Claims_ChargeWhatDirectSettlementCharges(uint256 seed, uint8 count) public {
        uint256 n = bound(count, 2, 12);
        uint256 direct = _open(motor, carB);
        bytes[] memory opt = new bytes[](n);
        bytes memory all;
        uint64 odometer = 1_000;
        uint32 harsh;
        for (uint256 i = 0; i < n; ++i) {
            uint256 r = uint256(keccak256(abi.encode(seed, i)));
            odometer += uint64(r % 50_000);
            harsh += uint32((r >> 64) % 3);
            opt[i] = _report(om, keyA, idA, uint64(i + 1), odometer, harsh);
            all = bytes.concat(all, _report(motor, keyB, direct, uint64(i + 1), odometer, harsh));
            vm.warp(block.timestamp + 1 + (r >> 128) % 600);
        }
        motor.settle(all);

        // the adversary: two batches of a random subset, the second committed first, the newest report withheld
        (bytes[] memory first, bytes[] memory second) = _split(opt, n - 1, seed);
        uint256 b2 = second.length == 0 ? 0 : _commit(second);
        uint256 b1 = first.length == 0 ? 0 : _commit(first);
        vm.warp(block.timestamp + WINDOW + 1);
        _claimAll(b1, first, seed);
        _claimAll(b2, second, seed >> 1);
        // anyone commits the newest report; its claim settles the period
        bytes[] memory newest = new bytes[](1);
        newest[0] = opt[n - 1];
        uint256 last = _commit(newest);
        _afterWindow(last);
        _claim(last, newest, 0);
        assertEq(om.policyOf(idA).charged, motor.policyOf(direct).charged, "the same premium");
        assertEq(om.policyOf(idA).lastOdometer, motor.policyOf(direct).lastOdometer);
        assertEq(om.policyOf(idA).lastFactorBps, motor.policyOf(direct).lastFactorBps);
    }

    /// @dev The first `upTo` reports, each kept with probability 3/4, dealt into two batches.
    function _split(bytes[] memory reports, uint256 upTo, uint256 seed)
        internal
        pure
        returns (bytes[] memory first, bytes[] memory second)
    {
        first = new bytes[](upTo);
        second = new bytes[](upTo);
        uint256 f;
        uint256 g;
        for (uint256 i = 0; i < upTo; ++i) {
            uint256 r = uint256(keccak256(abi.encode(seed, "deal", i))) % 4;
            if (r == 0) continue;
            if (r == 1) first[f++] = reports[i];
            else second[g++] = reports[i];
        }
        assembly ("memory-safe") {
            mstore(first, f)
            mstore(second, g)
        }
    }

    /// @dev Claim every leaf of a batch in an order drawn from `seed`; a claim that would not move the policy forward
    /// reverts (Replayed) and changes nothing.
    function _claimAll(uint256 batchId, bytes[] memory items, uint256 seed) internal {
        if (items.length == 0) return;
        bytes32[] memory ls = _leaves(items);
        uint256 start = seed % items.length;
        for (uint256 k = 0; k < items.length; ++k) {
            uint256 i = (start + k) % items.length;
            try om.claim(batchId, items[i], BatchTree.proof(ls, i)) {} catch {}
        }
    }
}
