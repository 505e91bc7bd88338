// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "forge-std/Test.sol";

import {DeviceRegistry} from "../../../contracts/DeviceRegistry.sol";
import {MeteredBilling} from "../../../contracts/MeteredBilling.sol";
import {OptimisticBilling} from "../../../contracts/OptimisticBilling.sol";
import {IDeviceRegistry} from "../../../contracts/interfaces/IDeviceRegistry.sol";
import {IMeteredBilling} from "../../../contracts/interfaces/IMeteredBilling.sol";
import {IOptimisticBilling} from "../../../contracts/interfaces/IOptimisticBilling.sol";
import {IOptimisticBatches} from "../../../contracts/interfaces/IOptimisticBatches.sol";
import {TestToken} from "../../../contracts/test/TestToken.sol";
import {BatchTree} from "../utils/BatchTree.sol";

/// @dev Drives OptimisticBilling: meters sign honest cumulative streams; a relayer commits any subset of them in any
/// order, sometimes with a forged leaf; a live watcher challenges every forged batch before its window ends (the
/// trust assumption); claimers try any leaf; top-ups, withdrawals, closes, bond releases and credit pulls interleave.
contract OptimisticHandler is Test {
    OptimisticBilling public opt;
    TestToken public token;
    address public constant PROVIDER = address(0x9903);
    address public constant CONSUMER = address(0xC003);
    address public constant RELAYER = address(0x4E1B);
    address public constant WATCHER = address(0xA7C4);
    uint256 internal constant FORGER_KEY = 0xBAD;

    uint256[] public ids;
    mapping(uint256 id => uint256 key) internal keyOf;
    mapping(uint256 id => uint64) internal seqOf;
    mapping(uint256 id => uint64) public signedMax;
    bytes[] internal signedSoFar;

    uint256[] internal batchIds;
    mapping(uint256 batchId => bytes[]) internal itemsOf;
    mapping(uint256 batchId => uint256) internal forgedAt; // index + 1; 0 = honest

    uint256 public ghostDeposited;
    uint256 public ghostWithdrawnByProvider;
    uint256 public ghostRefunded;
    uint256 public ghostBondsPaid;
    uint256 public ghostBurnt;
    uint256 public claims;
    uint256 public forgedClaims;
    uint256 public honestBatchesVoided;
    uint256 public registerRollbacks;

    constructor(OptimisticBilling opt_, TestToken token_) {
        opt = opt_;
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

    function addAgreement(uint256 id, uint256 key, uint256 deposit) external {
        ids.push(id);
        keyOf[id] = key;
        signedMax[id] = opt.agreementOf(id).startValue;
        ghostDeposited += deposit;
    }

    function sign(uint256 idSeed, uint64 consumption) external {
        if (ids.length == 0) return;
        uint256 id = ids[idSeed % ids.length];
        uint64 value = signedMax[id] + uint64(bound(consumption, 0, 1_000));
        signedMax[id] = value;
        signedSoFar.push(_item(keyOf[id], id, ++seqOf[id], value));
    }

    /// @dev Commit up to eight signed readings picked at random (replays and old ones included), maybe a forgery.
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
            items[bad] = _item(FORGER_KEY, id, seqOf[id] + 1, signedMax[id] + 1_000_000);
        }
        bytes memory data = BatchTree.pack(items);
        bytes32 root = BatchTree.root(_leaves(items));
        uint256 bond = opt.BOND();
        vm.prank(RELAYER);
        uint256 batchId = opt.commit{value: bond}(root, data);
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
        IMeteredBilling.Agreement memory before = opt.agreementOf(id);
        try opt.claim(batchId, items[index], BatchTree.proof(_leaves(items), index)) {
            IMeteredBilling.Agreement memory after_ = opt.agreementOf(id);
            ++claims;
            if (after_.lastValue > signedMax[id]) ++forgedClaims;
            if (after_.lastValue < before.lastValue) ++registerRollbacks;
        } catch {}
    }

    function releaseBond(uint256 batchSeed) external {
        if (batchIds.length == 0) return;
        try opt.releaseBond(batchIds[batchSeed % batchIds.length]) {} catch {}
    }

    function topUp(uint256 idSeed, uint256 amount) external {
        if (ids.length == 0) return;
        uint256 id = ids[idSeed % ids.length];
        amount = bound(amount, 1, 1e21);
        token.mint(CONSUMER, amount);
        vm.startPrank(CONSUMER);
        token.approve(address(opt), amount);
        try opt.topUp(id, amount) {
            ghostDeposited += amount;
        } catch {}
        vm.stopPrank();
    }

    function withdrawEarnings(uint256 idSeed) external {
        if (ids.length == 0) return;
        vm.prank(PROVIDER);
        try opt.withdrawEarnings(ids[idSeed % ids.length]) returns (uint256 amount) {
            ghostWithdrawnByProvider += amount;
        } catch {}
    }

    function close(uint256 idSeed) external {
        if (ids.length == 0) return;
        uint256 id = ids[idSeed % ids.length];
        vm.startPrank(CONSUMER);
        try opt.requestClose(id) {} catch {}
        try opt.close(id) returns (uint256 refund) {
            ghostRefunded += refund;
        } catch {}
        vm.stopPrank();
    }

    function withdrawCredits(bool watcher) external {
        vm.prank(watcher ? WATCHER : RELAYER);
        try opt.withdraw(address(0)) {} catch {}
    }

    function _watch() internal {
        for (uint256 i = 0; i < batchIds.length; ++i) {
            uint256 batchId = batchIds[i];
            IOptimisticBatches.Batch memory b = opt.batchOf(batchId);
            if (b.status != IOptimisticBatches.BatchStatus.Committed) continue;
            if (block.timestamp > uint256(b.committedAt) + opt.CHALLENGE_WINDOW()) continue;
            uint256 bad = forgedAt[batchId];
            if (bad == 0) continue;
            bytes[] memory items = itemsOf[batchId];
            bytes32[] memory proof = BatchTree.proof(_leaves(items), bad - 1);
            uint256 bond = opt.BOND();
            vm.prank(WATCHER);
            opt.challenge(batchId, items[bad - 1], proof);
            ghostBondsPaid += bond - bond / 2;
            ghostBurnt += bond / 2;
        }
    }

    function _item(uint256 key, uint256 id, uint64 seq, uint64 value) internal view returns (bytes memory) {
        (bytes32 r, bytes32 vs) = vm.signCompact(key, opt.hashReading(id, seq, uint64(block.timestamp), value));
        return abi.encodePacked(id, uint40(seq), uint40(block.timestamp), value, r, vs);
    }

    function _leaves(bytes[] memory items) internal view returns (bytes32[] memory ls) {
        ls = new bytes32[](items.length);
        for (uint256 i = 0; i < items.length; ++i) {
            ls[i] = opt.leafOf(items[i]);
        }
    }

    /// @dev Whether the batch's bond still sits in the contract.
    function bondHeld(uint256 batchId) external view returns (bool) {
        return opt.batchOf(batchId).status == IOptimisticBatches.BatchStatus.Committed;
    }

    function isForged(uint256 batchId) external view returns (bool) {
        return forgedAt[batchId] != 0;
    }
}

contract OptimisticInvariantsTest is Test {
    DeviceRegistry internal registry;
    MeteredBilling internal billing;
    OptimisticBilling internal opt;
    TestToken internal token;
    OptimisticHandler internal handler;

    function setUp() public {
        vm.warp(1_764_340_000);
        registry = new DeviceRegistry();
        billing = new MeteredBilling(registry);
        opt = new OptimisticBilling(registry, billing, 1 hours, 0.1 ether);
        token = new TestToken();
        handler = new OptimisticHandler(opt, token);

        IMeteredBilling.TariffBlock[] memory tiered = new IMeteredBilling.TariffBlock[](2);
        tiered[0] = IMeteredBilling.TariffBlock(500, 11);
        tiered[1] = IMeteredBilling.TariffBlock(0, 2);
        uint32 tariffId = billing.createTariff(tiered);
        for (uint256 i = 0; i < 3; ++i) {
            _open(0x0B7 + i, tariffId, 2_000 * (i + 1), uint64(i * 100));
        }
        targetContract(address(handler));
        bytes4[] memory selectors = new bytes4[](9);
        selectors[0] = OptimisticHandler.sign.selector;
        selectors[1] = OptimisticHandler.commit.selector;
        selectors[2] = OptimisticHandler.wait.selector;
        selectors[3] = OptimisticHandler.claim.selector;
        selectors[4] = OptimisticHandler.releaseBond.selector;
        selectors[5] = OptimisticHandler.topUp.selector;
        selectors[6] = OptimisticHandler.withdrawEarnings.selector;
        selectors[7] = OptimisticHandler.close.selector;
        selectors[8] = OptimisticHandler.withdrawCredits.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    function _open(uint256 key, uint32 tariffId, uint256 deposit, uint64 startValue) internal {
        address meter = vm.addr(key);
        uint64 deadline = uint64(block.timestamp);
        bytes32 digest = registry.hashRegistration(meter, address(this), IDeviceRegistry.DeviceKind.Meter, 0, deadline);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        registry.register(meter, IDeviceRegistry.DeviceKind.Meter, 0, deadline, abi.encodePacked(r, s, v));
        address provider = handler.PROVIDER();
        address consumer = handler.CONSUMER();
        vm.prank(provider);
        uint256 id = opt.offer(consumer, meter, tariffId, address(token), startValue, 1 hours);
        token.mint(consumer, deposit);
        vm.startPrank(consumer);
        token.approve(address(opt), deposit);
        opt.accept(id, deposit, startValue);
        vm.stopPrank();
        handler.addAgreement(id, key, deposit);
    }

    /// @dev Deposits: the token balance is exactly prepaid + unpaid earnings + credits; billed never exceeds
    /// deposited.
    function invariant_Accounting() public view {
        uint256 prepaid;
        uint256 earnings;
        uint256 n = handler.idsLength();
        for (uint256 i = 0; i < n; ++i) {
            uint256 id = handler.ids(i);
            IMeteredBilling.Agreement memory a = opt.agreementOf(id);
            prepaid += a.prepaid;
            earnings += opt.earningsOf(id);
            assertLe(a.prepaid + a.withdrawn, a.deposited, "billed <= deposited");
        }
        uint256 held = token.balanceOf(address(opt));
        uint256 credited = opt.credited(address(token));
        assertEq(held, prepaid + earnings + credited, "nothing unaccounted for");
        assertEq(
            handler.ghostDeposited(), held + handler.ghostWithdrawnByProvider() + handler.ghostRefunded() - credited
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
                assertTrue(opt.batchOf(batchId).status != IOptimisticBatches.BatchStatus.Voided, "honest batches stand");
            }
        }
        assertEq(address(opt).balance, live * opt.BOND() + opt.credited(address(0)), "bonds held exactly");
        assertEq(
            opt.withdrawable(address(0), handler.WATCHER()) + handler.WATCHER().balance,
            handler.ghostBondsPaid(),
            "every challenge paid the watcher"
        );
        assertEq(opt.BURN_SINK().balance, handler.ghostBurnt(), "every void burnt half its bond");
    }

    /// @dev With one live watcher, no forged reading is ever billed and the register never goes back.
    function invariant_OnlySignedReadingsBill() public view {
        assertEq(handler.forgedClaims(), 0, "a forged leaf billed");
        assertEq(handler.registerRollbacks(), 0, "the claimed register only grows");
        uint256 n = handler.idsLength();
        for (uint256 i = 0; i < n; ++i) {
            uint256 id = handler.ids(i);
            assertLe(opt.agreementOf(id).lastValue, handler.signedMax(id), "billed beyond what the meter signed");
        }
    }
}
