// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "forge-std/Test.sol";

import {DeviceRegistry} from "../../../contracts/DeviceRegistry.sol";
import {MeteredBilling} from "../../../contracts/MeteredBilling.sol";
import {IDeviceRegistry} from "../../../contracts/interfaces/IDeviceRegistry.sol";
import {IMeteredBilling} from "../../../contracts/interfaces/IMeteredBilling.sol";
import {TestToken} from "../../../contracts/test/TestToken.sol";
import {PackedReadings} from "../utils/PackedReadings.sol";

/// @dev Drives MeteredBilling through random readings (replayed, rolled back, out of order, in batches),
/// top-ups, provider withdrawals, closes and time jumps, keeping ghost totals of every unit that moved.
contract BillingHandler is Test {
    MeteredBilling public billing;
    TestToken public token;
    address public constant PROVIDER = address(0x9901);
    address public constant CONSUMER = address(0xC001);

    uint256[] public ids;
    mapping(uint256 id => uint256 key) internal keyOf;
    mapping(uint256 id => uint64) internal seqOf;
    mapping(uint256 id => uint256) internal valueOf;
    mapping(uint256 id => mapping(uint64 seq => uint256)) public consumed;
    IMeteredBilling.SignedReading[] internal signedSoFar;

    uint256 public ghostDeposited;
    uint256 public ghostBilled;
    uint256 public ghostWithdrawnByProvider;
    uint256 public ghostRefunded;
    uint256 public doubleConsumption;
    uint256 public registerRollbacks;

    constructor(MeteredBilling billing_, TestToken token_) {
        billing = billing_;
        token = token_;
    }

    function idsLength() external view returns (uint256) {
        return ids.length;
    }

    function addAgreement(uint256 id, uint256 key, uint256 deposit) external {
        ids.push(id);
        keyOf[id] = key;
        valueOf[id] = billing.agreementOf(id).startValue;
        ghostDeposited += deposit;
    }

    /// @dev A meter signs a new reading; the batch also carries a replayed earlier reading and, sometimes, a
    /// rolled-back register.
    function read(uint256 idSeed, uint64 consumption, uint256 replaySeed, bool rollback, uint8 skew) external {
        if (ids.length == 0) return;
        uint256 id = ids[idSeed % ids.length];
        vm.warp(block.timestamp + skew);
        uint256 value = valueOf[id] + bound(consumption, 0, 1_000);
        if (rollback && valueOf[id] > 0) value = valueOf[id] - 1;
        else valueOf[id] = value;
        IMeteredBilling.SignedReading memory fresh = _sign(id, ++seqOf[id], value);
        signedSoFar.push(fresh);

        IMeteredBilling.SignedReading[] memory batch = new IMeteredBilling.SignedReading[](3);
        batch[0] = signedSoFar[replaySeed % signedSoFar.length];
        batch[1] = fresh;
        batch[2] = fresh;
        for (uint256 i = 0; i < 3; ++i) {
            _relayOne(batch[i]);
        }
    }

    function _sign(uint256 id, uint64 seq, uint256 value)
        internal
        view
        returns (IMeteredBilling.SignedReading memory rd)
    {
        rd.agreementId = id;
        rd.seq = seq;
        rd.timestamp = uint64(block.timestamp);
        rd.value = value;
        (rd.r, rd.vs) = vm.signCompact(keyOf[id], billing.hashReading(id, seq, rd.timestamp, value));
    }

    function _relayOne(IMeteredBilling.SignedReading memory rd) internal {
        IMeteredBilling.Agreement memory before = billing.agreementOf(rd.agreementId);
        IMeteredBilling.SignedReading[] memory one = new IMeteredBilling.SignedReading[](1);
        one[0] = rd;
        if (billing.settle(PackedReadings.pack(one)) == 1) {
            if (++consumed[rd.agreementId][rd.seq] > 1) ++doubleConsumption;
            IMeteredBilling.Agreement memory after_ = billing.agreementOf(rd.agreementId);
            if (after_.lastValue < before.lastValue) ++registerRollbacks;
            ghostBilled += before.prepaid - after_.prepaid;
        }
    }

    function topUp(uint256 idSeed, uint256 amount) external {
        if (ids.length == 0) return;
        uint256 id = ids[idSeed % ids.length];
        amount = bound(amount, 1, 1e21);
        token.mint(CONSUMER, amount);
        vm.startPrank(CONSUMER);
        token.approve(address(billing), amount);
        IMeteredBilling.Agreement memory before = billing.agreementOf(id);
        try billing.topUp(id, amount) {
            ghostDeposited += amount;
            ghostBilled += before.arrears - billing.agreementOf(id).arrears; // arrears paid are billed now
        } catch {}
        vm.stopPrank();
    }

    function withdrawEarnings(uint256 idSeed) external {
        if (ids.length == 0) return;
        vm.prank(PROVIDER);
        try billing.withdrawEarnings(ids[idSeed % ids.length]) returns (uint256 amount) {
            ghostWithdrawnByProvider += amount;
        } catch {}
    }

    function close(uint256 idSeed, uint32 wait) external {
        if (ids.length == 0) return;
        uint256 id = ids[idSeed % ids.length];
        vm.startPrank(CONSUMER);
        try billing.requestClose(id) {} catch {}
        vm.warp(block.timestamp + bound(wait, 0, 2 days));
        try billing.close(id) returns (uint256 refund) {
            ghostRefunded += refund;
        } catch {}
        vm.stopPrank();
    }
}

/// @dev The adversarial relayer: each meter signs an honest cumulative stream (one reading per `sign`, timestamped
/// now, even after closeAt); the relayer relays any subset of it, in any order and batching, interleaved with
/// top-ups, close requests, time jumps and closes. Ghost: the register value the bill must stand at, the highest
/// reading relayed while the agreement was open and signed by closeAt.
contract BillingRelayHandler is Test {
    MeteredBilling public billing;
    TestToken public token;
    address public constant PROVIDER = address(0x9902);
    address public constant CONSUMER = address(0xC002);
    address public constant RELAYER = address(0x4E1A);
    uint256 internal constant WINDOW = 16;

    uint256[] public ids;
    mapping(uint256 id => uint256 key) internal keyOf;
    mapping(uint256 id => IMeteredBilling.SignedReading[]) internal stream;
    mapping(uint256 id => uint256) public ghostValue;
    uint256 public relayedBatches;
    uint256 public closes;

    constructor(MeteredBilling billing_, TestToken token_) {
        billing = billing_;
        token = token_;
    }

    function idsLength() external view returns (uint256) {
        return ids.length;
    }

    function addAgreement(uint256 id, uint256 key) external {
        ids.push(id);
        keyOf[id] = key;
        ghostValue[id] = billing.agreementOf(id).startValue;
    }

    function _pick(uint256 seed) internal view returns (uint256) {
        return ids[seed % ids.length];
    }

    /// @dev The meter signs its next reading now.
    function sign(uint256 idSeed, uint64 consumption, uint32 wait) external {
        uint256 id = _pick(idSeed);
        vm.warp(block.timestamp + bound(wait, 0, 1 hours));
        IMeteredBilling.SignedReading[] storage s = stream[id];
        uint256 value = s.length == 0 ? billing.agreementOf(id).startValue : s[s.length - 1].value;
        IMeteredBilling.SignedReading memory rd;
        rd.agreementId = id;
        rd.seq = uint64(s.length + 1);
        rd.timestamp = uint64(block.timestamp);
        rd.value = value + bound(consumption, 0, 1_000);
        (rd.r, rd.vs) = vm.signCompact(keyOf[id], billing.hashReading(id, rd.seq, rd.timestamp, rd.value));
        s.push(rd);
    }

    /// @dev Relay a subset (`mask` over the newest WINDOW readings) in rotated, possibly reversed order as one batch.
    function relay(uint256 idSeed, uint16 mask, uint8 rotate, bool reverse) external {
        uint256 id = _pick(idSeed);
        IMeteredBilling.SignedReading[] storage s = stream[id];
        uint256 n = s.length < WINDOW ? s.length : WINDOW;
        if (n == 0) return;
        uint256 first = s.length - n;
        uint256 count = 0;
        for (uint256 i = 0; i < n; ++i) {
            if (mask & (1 << i) != 0) ++count;
        }
        IMeteredBilling.SignedReading[] memory batch = new IMeteredBilling.SignedReading[](count);
        uint256 k = 0;
        for (uint256 j = 0; j < n; ++j) {
            uint256 i = (j + rotate) % n;
            if (reverse) i = n - 1 - i;
            if (mask & (1 << i) != 0) batch[k++] = s[first + i];
        }
        IMeteredBilling.Agreement memory a = billing.agreementOf(id);
        if (a.status == IMeteredBilling.AgreementStatus.Active) {
            for (uint256 i = 0; i < count; ++i) {
                bool inWindow = a.closeAt == 0 || batch[i].timestamp <= a.closeAt;
                if (inWindow && batch[i].value > ghostValue[id]) ghostValue[id] = batch[i].value;
            }
        }
        vm.prank(RELAYER);
        billing.settle(PackedReadings.pack(batch));
        ++relayedBatches;
    }

    function topUp(uint256 idSeed, uint256 amount) external {
        uint256 id = _pick(idSeed);
        amount = bound(amount, 1, 1e18);
        token.mint(CONSUMER, amount);
        vm.startPrank(CONSUMER);
        token.approve(address(billing), amount);
        try billing.topUp(id, amount) {} catch {}
        vm.stopPrank();
    }

    function requestClose(uint256 idSeed) external {
        vm.prank(CONSUMER);
        try billing.requestClose(_pick(idSeed)) {} catch {}
    }

    function warp(uint32 by) external {
        vm.warp(block.timestamp + bound(by, 0, 3 hours));
    }

    function close(uint256 idSeed) external {
        vm.prank(CONSUMER);
        try billing.close(_pick(idSeed)) {
            ++closes;
        } catch {}
    }

    function withdrawEarnings(uint256 idSeed) external {
        vm.prank(PROVIDER);
        try billing.withdrawEarnings(_pick(idSeed)) {} catch {}
    }

    /// @dev The honest final register: the newest reading signed by closeAt (by now while no close is requested).
    function honestValue(uint256 id) external view returns (uint256 value) {
        IMeteredBilling.Agreement memory a = billing.agreementOf(id);
        value = a.startValue;
        IMeteredBilling.SignedReading[] storage s = stream[id];
        for (uint256 i = 0; i < s.length; ++i) {
            if (a.closeAt == 0 || s[i].timestamp <= a.closeAt) value = s[i].value;
        }
    }
}

/// forge-config: default.invariant.runs = 16
/// forge-config: default.invariant.depth = 48
/// forge-config: ci.invariant.runs = 256
/// forge-config: ci.invariant.depth = 128
contract BillingInvariantsTest is Test {
    DeviceRegistry internal registry;
    MeteredBilling internal billing;
    TestToken internal token;
    BillingHandler internal handler;
    BillingRelayHandler internal relay;
    TestToken internal relayToken;

    function setUp() public {
        vm.warp(1_764_340_000);
        registry = new DeviceRegistry();
        billing = new MeteredBilling(registry);
        token = new TestToken();
        handler = new BillingHandler(billing, token);

        IMeteredBilling.TariffBlock[] memory flat = new IMeteredBilling.TariffBlock[](1);
        flat[0] = IMeteredBilling.TariffBlock(0, 7);
        uint32 flatId = billing.createTariff(flat);
        IMeteredBilling.TariffBlock[] memory tiered = new IMeteredBilling.TariffBlock[](3);
        tiered[0] = IMeteredBilling.TariffBlock(500, 11);
        tiered[1] = IMeteredBilling.TariffBlock(1_500, 5);
        tiered[2] = IMeteredBilling.TariffBlock(0, 2);
        uint32 tieredId = billing.createTariff(tiered);

        address provider = handler.PROVIDER();
        address consumer = handler.CONSUMER();
        for (uint256 i = 0; i < 4; ++i) {
            uint256 key = 0x5EED + i;
            address meter = _register(key);
            uint256 deposit = 1_000 * (i + 1);
            vm.prank(provider);
            uint256 id = billing.offer(
                consumer, meter, i % 2 == 0 ? flatId : tieredId, address(token), uint64(i * 1000), 1 hours
            );
            token.mint(consumer, deposit);
            vm.startPrank(consumer);
            token.approve(address(billing), deposit);
            billing.accept(id, deposit, uint64(i * 1000));
            vm.stopPrank();
            handler.addAgreement(id, key, deposit);
        }
        targetContract(address(handler));
        bytes4[] memory selectors = new bytes4[](4);
        selectors[0] = BillingHandler.read.selector;
        selectors[1] = BillingHandler.topUp.selector;
        selectors[2] = BillingHandler.withdrawEarnings.selector;
        selectors[3] = BillingHandler.close.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));

        relayToken = new TestToken();
        relay = new BillingRelayHandler(billing, relayToken);
        for (uint256 i = 0; i < 2; ++i) {
            uint256 key = 0xADE5 + i;
            address meter = _register(key);
            uint64 start = uint64(i * 700);
            vm.prank(relay.PROVIDER());
            uint256 id =
                billing.offer(relay.CONSUMER(), meter, i == 0 ? flatId : tieredId, address(relayToken), start, 1 hours);
            relayToken.mint(relay.CONSUMER(), 1e18);
            vm.startPrank(relay.CONSUMER());
            relayToken.approve(address(billing), 1e18);
            billing.accept(id, 1e18, start);
            vm.stopPrank();
            relay.addAgreement(id, key);
        }
        targetContract(address(relay));
        bytes4[] memory relaySelectors = new bytes4[](8);
        relaySelectors[0] = BillingRelayHandler.sign.selector;
        relaySelectors[1] = BillingRelayHandler.relay.selector;
        relaySelectors[2] = BillingRelayHandler.topUp.selector;
        relaySelectors[3] = BillingRelayHandler.requestClose.selector;
        relaySelectors[4] = BillingRelayHandler.warp.selector;
        relaySelectors[5] = BillingRelayHandler.close.selector;
        relaySelectors[6] = BillingRelayHandler.withdrawEarnings.selector;
        relaySelectors[7] = BillingRelayHandler.relay.selector; // relaying is the adversary's main move
        targetSelector(FuzzSelector({addr: address(relay), selectors: relaySelectors}));
    }

    function _register(uint256 key) internal returns (address device) {
        device = vm.addr(key);
        uint64 deadline = uint64(block.timestamp);
        bytes32 digest = registry.hashRegistration(device, address(this), IDeviceRegistry.DeviceKind.Meter, 0, deadline);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        registry.register(device, IDeviceRegistry.DeviceKind.Meter, 0, deadline, abi.encodePacked(r, s, v));
    }

    function _sums() internal view returns (uint256 prepaid, uint256 earnings, uint256 deposited) {
        uint256 n = handler.idsLength();
        for (uint256 i = 0; i < n; ++i) {
            uint256 id = handler.ids(i);
            IMeteredBilling.Agreement memory a = billing.agreementOf(id);
            prepaid += a.prepaid;
            earnings += billing.earningsOf(id);
            deposited += a.deposited;
            assertLe(a.deposited - a.prepaid, a.deposited, "billed <= deposited per agreement");
        }
    }

    /// @dev Money: the token balance covers every liability (consumers' prepaid balances + providers' unpaid
    /// earnings) exactly; everything deposited is prepaid, billed or refunded; billed never exceeds deposited.
    function invariant_Accounting() public view {
        (uint256 prepaid, uint256 earnings, uint256 deposited) = _sums();
        uint256 held = token.balanceOf(address(billing));
        uint256 credited = billing.credited(address(token));
        assertGe(held, prepaid + earnings + credited, "balance covers liabilities");
        assertEq(held, prepaid + earnings + credited, "nothing unaccounted for");
        assertEq(
            handler.ghostDeposited(), held + handler.ghostWithdrawnByProvider() + handler.ghostRefunded() - credited
        );
        assertEq(handler.ghostBilled(), earnings + handler.ghostWithdrawnByProvider(), "billed = earned");
        assertLe(handler.ghostBilled(), handler.ghostDeposited() - handler.ghostRefunded(), "billed <= deposited");
        assertEq(deposited + handler.ghostRefunded(), handler.ghostDeposited());
    }

    /// @dev Each (agreement, seq) settles at most once although every reading is relayed three times and old
    /// readings are replayed; the register never goes back.
    function invariant_ReplayAndRollback() public view {
        assertEq(handler.doubleConsumption(), 0, "each (device, seq) consumed once");
        assertEq(handler.registerRollbacks(), 0, "the settled register only grows");
    }

    /// @dev The handler reaches billing, arrears, top-ups, withdrawals and closing.
    function test_HandlerReachesEveryOutcome() public {
        handler.read(0, 100, 0, false, 1); // flat: 700 billed of 1000
        handler.read(1, 1_000, 0, false, 1); // tiered from 1000: 500×11 + 500×5 = 8000 > 2000 → arrears
        handler.topUp(1, 10_000); // pays 6000 arrears, 4000 prepaid
        handler.read(1, 0, 0, true, 1); // rollback refused
        handler.withdrawEarnings(0);
        handler.close(0, 2 hours + 1); // notice 1 h, then strictly after the 1 h grace
        assertEq(handler.ghostBilled(), 700 + 8_000);
        assertEq(handler.ghostWithdrawnByProvider(), 700);
        assertEq(handler.ghostRefunded(), 300);
        assertEq(uint8(billing.agreementOf(handler.ids(1)).status), uint8(IMeteredBilling.AgreementStatus.Active));
        invariant_Accounting();
        invariant_ReplayAndRollback();
    }

    /// @dev What was billed on `id` (paid or still owed as arrears); withdrawals and refunds do not change it.
    function _billed(IMeteredBilling.Agreement memory a) internal pure returns (uint256) {
        return a.deposited - a.prepaid + a.arrears;
    }

    function _cost(IMeteredBilling.Agreement memory a, uint256 value) internal view returns (uint256) {
        return billing.costOf(a.tariffId, 0, uint64(value - a.startValue));
    }

    /// @dev Relayers choose nothing: whatever subset, order and batching was relayed, and whatever was raced against
    /// it, the bill is the tariff cost from the start value to the newest reading relayed while open and signed by
    /// closeAt; once the grace is over and that reading was relayed, it is the honest bill.
    function invariant_RelayersChooseNothing() public view {
        uint256 n = relay.idsLength();
        for (uint256 i = 0; i < n; ++i) {
            uint256 rid = relay.ids(i);
            IMeteredBilling.Agreement memory a = billing.agreementOf(rid);
            assertEq(_billed(a), _cost(a, a.lastValue), "billed = tariff cost(start -> last settled)");
            assertEq(a.lastValue, relay.ghostValue(rid), "settled register = newest relayed in the window");
            uint256 honest = relay.honestValue(rid);
            bool graceOver = a.closeAt != 0 && block.timestamp > uint256(a.closeAt) + billing.SETTLEMENT_GRACE();
            if (graceOver && relay.ghostValue(rid) == honest) {
                assertEq(_billed(a), _cost(a, honest), "every reading by closeAt relayed: the honest bill");
            }
        }
    }

    /// @dev Money of the relayed agreements: the balance covers prepaid balances, unwithdrawn earnings and credits.
    function invariant_RelayedAgreementsAreCovered() public view {
        uint256 owed = billing.credited(address(relayToken));
        uint256 n = relay.idsLength();
        for (uint256 i = 0; i < n; ++i) {
            uint256 rid = relay.ids(i);
            owed += billing.agreementOf(rid).prepaid + billing.earningsOf(rid);
        }
        assertGe(relayToken.balanceOf(address(billing)), owed, "balance >= prepaid + earnings + credited");
    }

    /// @dev The adversarial handler reaches a late relay inside the grace, a refused close, an AfterEnd reading and
    /// the close, and the bill is the honest one.
    function test_RelayHandlerReachesTheRace() public {
        uint256 rid = relay.ids(0);
        relay.sign(0, 100, 0); // 100 units
        relay.requestClose(0); // closeAt = now + 1 h
        relay.sign(0, 200, 59 minutes); // signed before closeAt: 300 units
        relay.sign(0, 400, 2 minutes); // signed after closeAt: refused
        relay.warp(30 minutes);
        relay.close(0); // too early: the grace is not over
        assertEq(relay.closes(), 0);
        relay.relay(0, 0x7, 0, true); // newest first: the after-end one refused, then 300 settles, then 100 replayed
        relay.warp(1 hours);
        relay.close(0);
        assertEq(relay.closes(), 1);
        IMeteredBilling.Agreement memory a = billing.agreementOf(rid);
        assertEq(a.lastValue, a.startValue + 300);
        assertEq(_billed(a), 300 * 7);
        invariant_RelayersChooseNothing();
        invariant_RelayedAgreementsAreCovered();
    }
}
