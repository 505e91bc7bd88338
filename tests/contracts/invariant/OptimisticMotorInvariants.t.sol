// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "forge-std/Test.sol";

import {DeviceRegistry} from "../../../contracts/DeviceRegistry.sol";
import {OptimisticMotor} from "../../../contracts/OptimisticMotor.sol";
import {IDeviceRegistry} from "../../../contracts/interfaces/IDeviceRegistry.sol";
import {IMotorInsurance} from "../../../contracts/interfaces/IMotorInsurance.sol";
import {IOptimisticBatches} from "../../../contracts/interfaces/IOptimisticBatches.sol";
import {TestToken} from "../../../contracts/test/TestToken.sol";
import {BatchTree} from "../utils/BatchTree.sol";
import {PackedReports} from "../utils/PackedReports.sol";

/// @dev Drives OptimisticMotor: vehicles sign honest cumulative streams; a relayer commits any subset of them in any
/// order, sometimes with a forged report; a live watcher challenges every forged batch before its window ends (the
/// trust assumption); claimers try any leaf; top-ups, earnings withdrawals, closes, bond releases and credit pulls
/// interleave.
contract OptimisticMotorHandler is Test {
    OptimisticMotor public om;
    TestToken public token;
    address public constant INSURER = address(0x1A5E);
    address public constant HOLDER = address(0x401D);
    address public constant RELAYER = address(0x4E1C);
    address public constant WATCHER = address(0xA7C5);
    uint256 internal constant FORGER_KEY = 0xBAD2;

    uint256[] public ids;
    mapping(uint256 id => uint256 key) internal keyOf;
    mapping(uint256 id => uint64) internal seqOf;
    mapping(uint256 id => uint64) public signedOdometer;
    mapping(uint256 id => uint32) public signedHarsh;
    bytes[] internal signedSoFar;

    uint256[] internal batchIds;
    mapping(uint256 batchId => bytes[]) internal itemsOf;
    mapping(uint256 batchId => uint256) internal forgedAt; // index + 1; 0 = honest

    uint256 public ghostDeposited;
    uint256 public ghostWithdrawnByInsurer;
    uint256 public ghostRefunded;
    uint256 public ghostBondsPaid;
    uint256 public ghostBurnt;
    uint256 public claims;
    uint256 public forgedClaims;
    uint256 public registerRollbacks;

    constructor(OptimisticMotor om_, TestToken token_) {
        om = om_;
        token = token_;
        vm.deal(RELAYER, 1_000 ether);
    }

    function idsLength() external view returns (uint256) {
        return ids.length;
    }

    function batchCount() external view returns (uint256) {
        return batchIds.length;
    }

    function batchIdAt(uint256 i) external view returns (uint256) {
        return batchIds[i];
    }

    function addPolicy(uint256 id, uint256 key, uint256 deposit) external {
        ids.push(id);
        keyOf[id] = key;
        signedOdometer[id] = om.policyOf(id).startOdometer;
        ghostDeposited += deposit;
    }

    function sign(uint256 idSeed, uint32 metres, bool harsh) external {
        if (ids.length == 0) return;
        uint256 id = ids[idSeed % ids.length];
        signedOdometer[id] += uint64(bound(metres, 0, 50_000));
        if (harsh) ++signedHarsh[id];
        signedSoFar.push(_report(keyOf[id], id, ++seqOf[id], signedOdometer[id], signedHarsh[id]));
    }

    /// @dev Commit up to eight signed reports picked at random (replays and old ones included), maybe a forgery.
    function commit(uint256 seed, uint8 size, bool forge) external {
        if (signedSoFar.length == 0) return;
        uint256 n = bound(size, 1, 8);
        bytes[] memory items = new bytes[](n);
        for (uint256 i = 0; i < n; ++i) {
            items[i] = signedSoFar[uint256(keccak256(abi.encode(seed, i))) % signedSoFar.length];
        }
        uint256 bad;
        if (forge) {
            bad = seed % n;
            uint256 id = ids[seed % ids.length];
            items[bad] = _report(FORGER_KEY, id, seqOf[id] + 1, signedOdometer[id] + 1_000_000, 0);
        }
        bytes memory data = BatchTree.packReports(items);
        bytes32 root = BatchTree.root(_leaves(items));
        uint256 bond = om.BOND();
        vm.prank(RELAYER);
        uint256 batchId = om.commit{value: bond}(root, data);
        batchIds.push(batchId);
        for (uint256 i = 0; i < n; ++i) {
            itemsOf[batchId].push(items[i]);
        }
        if (forge) forgedAt[batchId] = bad + 1;
    }

    /// @dev Time passes, but never past a forged batch's window before the watcher has challenged it.
    function wait(uint32 seconds_) external {
        _watch();
        vm.warp(block.timestamp + bound(seconds_, 0, 3 hours));
    }

    function claim(uint256 batchSeed, uint256 itemSeed) external {
        if (batchIds.length == 0) return;
        uint256 batchId = batchIds[batchSeed % batchIds.length];
        bytes[] memory items = itemsOf[batchId];
        uint256 index = itemSeed % items.length;
        uint256 id = uint256(bytes32(items[index]));
        IMotorInsurance.Policy memory before = om.policyOf(id);
        try om.claim(batchId, items[index], BatchTree.proof(_leaves(items), index)) {
            IMotorInsurance.Policy memory after_ = om.policyOf(id);
            ++claims;
            if (after_.lastOdometer > signedOdometer[id]) ++forgedClaims;
            if (after_.lastOdometer < before.lastOdometer || after_.lastHarsh < before.lastHarsh) ++registerRollbacks;
        } catch {}
    }

    function releaseBond(uint256 batchSeed) external {
        if (batchIds.length == 0) return;
        try om.releaseBond(batchIds[batchSeed % batchIds.length]) {} catch {}
    }

    function topUp(uint256 idSeed, uint256 amount) external {
        if (ids.length == 0) return;
        uint256 id = ids[idSeed % ids.length];
        amount = bound(amount, 1, 1e21);
        token.mint(HOLDER, amount);
        vm.startPrank(HOLDER);
        token.approve(address(om), amount);
        try om.topUp(id, amount) {
            ghostDeposited += amount;
        } catch {}
        vm.stopPrank();
    }

    function withdrawEarnings(uint256 idSeed) external {
        if (ids.length == 0) return;
        vm.prank(INSURER);
        try om.withdrawEarnings(ids[idSeed % ids.length]) returns (uint256 amount) {
            ghostWithdrawnByInsurer += amount;
        } catch {}
    }

    function close(uint256 idSeed) external {
        if (ids.length == 0) return;
        uint256 id = ids[idSeed % ids.length];
        vm.prank(HOLDER);
        try om.requestClose(id) {} catch {}
        try om.close(id) returns (uint256 refund) {
            ghostRefunded += refund;
        } catch {}
    }

    function withdrawCredits(bool watcher) external {
        vm.prank(watcher ? WATCHER : RELAYER);
        try om.withdraw(address(0)) {} catch {}
    }

    function _watch() internal {
        for (uint256 i = 0; i < batchIds.length; ++i) {
            uint256 batchId = batchIds[i];
            IOptimisticBatches.Batch memory b = om.batchOf(batchId);
            if (b.status != IOptimisticBatches.BatchStatus.Committed) continue;
            if (block.timestamp > uint256(b.committedAt) + om.CHALLENGE_WINDOW()) continue;
            uint256 bad = forgedAt[batchId];
            if (bad == 0) continue;
            bytes[] memory items = itemsOf[batchId];
            bytes32[] memory proof = BatchTree.proof(_leaves(items), bad - 1);
            uint256 bond = om.BOND();
            vm.prank(WATCHER);
            om.challenge(batchId, items[bad - 1], proof);
            ghostBondsPaid += bond - bond / 2;
            ghostBurnt += bond / 2;
        }
    }

    function _report(uint256 key, uint256 id, uint64 seq, uint64 odometer, uint32 harsh)
        internal
        view
        returns (bytes memory)
    {
        uint64 time = uint64(block.timestamp);
        (bytes32 r, bytes32 vs) = vm.signCompact(key, om.hashTelematics(id, seq, time, odometer, harsh, 0));
        return PackedReports.item(
            IMotorInsurance.SignedTelematics(id, seq, time, odometer, harsh, 0, r, vs), om.telematicsTerms(id)
        );
    }

    function _leaves(bytes[] memory items) internal view returns (bytes32[] memory ls) {
        ls = new bytes32[](items.length);
        for (uint256 i = 0; i < items.length; ++i) {
            ls[i] = om.leafOf(items[i]);
        }
    }

    function bondHeld(uint256 batchId) external view returns (bool) {
        return om.batchOf(batchId).status == IOptimisticBatches.BatchStatus.Committed;
    }

    function isForged(uint256 batchId) external view returns (bool) {
        return forgedAt[batchId] != 0;
    }
}

contract OptimisticMotorInvariantsTest is Test {
    DeviceRegistry internal registry;
    OptimisticMotor internal om;
    TestToken internal token;
    OptimisticMotorHandler internal handler;

    function setUp() public {
        vm.warp(1_764_340_000);
        registry = new DeviceRegistry();
        om = new OptimisticMotor(registry, 1 hours, 0.1 ether);
        token = new TestToken();
        handler = new OptimisticMotorHandler(om, token);
        for (uint256 i = 0; i < 3; ++i) {
            _open(0x0C7 + i, 2e18 * (i + 1), uint64(i * 10_000));
        }
        targetContract(address(handler));
        bytes4[] memory selectors = new bytes4[](9);
        selectors[0] = OptimisticMotorHandler.sign.selector;
        selectors[1] = OptimisticMotorHandler.commit.selector;
        selectors[2] = OptimisticMotorHandler.wait.selector;
        selectors[3] = OptimisticMotorHandler.claim.selector;
        selectors[4] = OptimisticMotorHandler.releaseBond.selector;
        selectors[5] = OptimisticMotorHandler.topUp.selector;
        selectors[6] = OptimisticMotorHandler.withdrawEarnings.selector;
        selectors[7] = OptimisticMotorHandler.close.selector;
        selectors[8] = OptimisticMotorHandler.withdrawCredits.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    function _open(uint256 key, uint256 deposit, uint64 startOdometer) internal {
        address vehicle = vm.addr(key);
        uint64 deadline = uint64(block.timestamp);
        bytes32 digest =
            registry.hashRegistration(vehicle, address(this), IDeviceRegistry.DeviceKind.Vehicle, 0, deadline);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        registry.register(vehicle, IDeviceRegistry.DeviceKind.Vehicle, 0, deadline, abi.encodePacked(r, s, v));
        address holder = handler.HOLDER();
        vm.prank(handler.INSURER());
        uint256 id =
            om.offer(holder, vehicle, address(token), 1e15, 10_000, 25_000, 700, startOdometer, 0, 0, 1 hours);
        token.mint(holder, deposit);
        vm.startPrank(holder);
        token.approve(address(om), deposit);
        om.accept(id, deposit, startOdometer, 0, 0);
        vm.stopPrank();
        handler.addPolicy(id, key, deposit);
    }

    /// @dev The handler's moves do what the invariants rely on: an honest batch claimed after the window charges,
    /// a forged one is challenged by the watcher before its window ends, a close refunds.
    function test_HandlerReachesEveryOutcome() public {
        handler.sign(0, 40_000, true);
        handler.sign(0, 10_000, false);
        handler.commit(0, 2, false);
        handler.commit(1, 3, true);
        handler.wait(2 hours);
        assertEq(handler.ghostBondsPaid(), 0.05 ether, "the forged batch was challenged");
        handler.claim(0, 0);
        handler.claim(0, 1);
        assertGt(handler.claims(), 0, "a claim charged");
        uint256 id = handler.ids(0);
        assertGt(om.policyOf(id).charged, 0, "the premium moved");
        handler.withdrawEarnings(0);
        assertGt(handler.ghostWithdrawnByInsurer(), 0, "the insurer was paid");
        handler.close(0);
        handler.wait(3 hours);
        handler.wait(3 hours);
        handler.close(0);
        assertGt(handler.ghostRefunded(), 0, "the unused prepaid went back");
    }

    /// @dev Money: the token balance is exactly what came in minus what the insurer withdrew and the refunds paid
    /// out (a refund whose push failed stays as a credit); per policy, the premiums never exceed the money in and the insurer never takes more than was charged.
    function invariant_Accounting() public view {
        uint256 n = handler.idsLength();
        for (uint256 i = 0; i < n; ++i) {
            IMotorInsurance.Policy memory p = om.policyOf(handler.ids(i));
            assertLe(p.charged + p.refunded, p.deposited, "charged + refunded <= deposited");
            assertLe(p.withdrawn, p.charged, "withdrawn <= charged");
        }
        assertEq(
            token.balanceOf(address(om)),
            handler.ghostDeposited() - handler.ghostWithdrawnByInsurer() - handler.ghostRefunded()
                + om.credited(address(token)),
            "nothing unaccounted for"
        );
    }

    /// @dev Bonds: the ETH held is the bonds of live batches plus ETH credits; half of every forged batch's bond went
    /// to the watcher and half was burnt; no honest batch was voided.
    function invariant_Bonds() public view {
        uint256 live;
        uint256 m = handler.batchCount();
        for (uint256 i = 0; i < m; ++i) {
            uint256 batchId = handler.batchIdAt(i);
            if (handler.bondHeld(batchId)) ++live;
            if (!handler.isForged(batchId)) {
                assertTrue(om.batchOf(batchId).status != IOptimisticBatches.BatchStatus.Voided, "honest batches stand");
            }
        }
        assertEq(address(om).balance, live * om.BOND() + om.credited(address(0)), "bonds held exactly");
        assertEq(
            om.withdrawable(address(0), handler.WATCHER()) + handler.WATCHER().balance,
            handler.ghostBondsPaid(),
            "every challenge paid the watcher"
        );
        assertEq(om.BURN_SINK().balance, handler.ghostBurnt(), "every void burnt half its bond");
    }

    /// @dev With one live watcher, no forged report is ever charged and the registers never go back.
    function invariant_OnlySignedReportsCharge() public view {
        assertEq(handler.forgedClaims(), 0, "a forged report charged");
        assertEq(handler.registerRollbacks(), 0, "the claimed registers only grow");
        uint256 n = handler.idsLength();
        for (uint256 i = 0; i < n; ++i) {
            uint256 id = handler.ids(i);
            assertLe(om.policyOf(id).lastOdometer, handler.signedOdometer(id), "charged beyond what the vehicle signed");
        }
    }
}
