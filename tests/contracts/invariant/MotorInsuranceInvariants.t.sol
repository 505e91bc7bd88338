// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "forge-std/Test.sol";

import {DeviceRegistry} from "../../../contracts/DeviceRegistry.sol";
import {MotorInsurance} from "../../../contracts/MotorInsurance.sol";
import {IDeviceRegistry} from "../../../contracts/interfaces/IDeviceRegistry.sol";
import {IMotorInsurance} from "../../../contracts/interfaces/IMotorInsurance.sol";
import {TestToken} from "../../../contracts/test/TestToken.sol";
import {PackedReports} from "../utils/PackedReports.sol";

/// @dev Drives MotorInsurance through random telematics (replayed, rolled back, forged, in bursts of events),
/// top-ups, premium withdrawals, closes and time jumps, keeping per-policy ghost totals of every unit that moved.
contract MotorHandler is Test {
    MotorInsurance public motor;
    TestToken public token;
    address public constant INSURER = address(0x1A5E);
    address public constant HOLDER = address(0x401D);
    uint256 internal constant FORGER_KEY = 0xBAD;
    uint256 internal constant MAX_POLICIES = 12;

    uint256[] internal vehicleKeys;

    uint256[] public ids;
    mapping(uint256 id => uint256 key) internal keyOf;
    mapping(uint256 id => uint64) internal seqOf;
    mapping(uint256 id => uint64) internal odometerOf;
    mapping(uint256 id => uint32) internal harshOf;
    mapping(uint256 id => uint32) internal speedingOf;
    mapping(uint256 id => mapping(uint64 seq => uint256)) public consumed;
    /// @dev The terms a relayer fetched when the policy opened: stale once a close was requested.
    mapping(uint256 id => bytes) internal termsAtOffer;
    IMotorInsurance.SignedTelematics[] internal signedSoFar;

    mapping(uint256 id => uint256) public ghostDeposited;
    mapping(uint256 id => uint256) public ghostCharged;
    mapping(uint256 id => uint256) public ghostRefunded;
    mapping(uint256 id => uint256) public ghostWithdrawn;
    uint256 public doubleSettlement;
    uint256 public registerRollbacks;
    uint256 public factorsOutOfBounds;
    uint256 public forgedSettled;
    uint256 public lapses;
    uint256 public reinstatements;
    uint256 public closes;

    constructor(MotorInsurance motor_, TestToken token_) {
        motor = motor_;
        token = token_;
    }

    function idsLength() external view returns (uint256) {
        return ids.length;
    }

    function addPolicy(uint256 id, uint256 key, uint256 deposit) external {
        vehicleKeys.push(key);
        ids.push(id);
        keyOf[id] = key;
        IMotorInsurance.Policy memory p = motor.policyOf(id);
        (odometerOf[id], harshOf[id], speedingOf[id]) = (p.startOdometer, p.startHarsh, p.startSpeeding);
        ghostDeposited[id] += deposit;
        termsAtOffer[id] = motor.telematicsTerms(id);
    }

    /// @dev The vehicle signs new cumulative registers; the batch also carries a replay of an earlier report (sent
    /// with the terms of the offer, stale after a close request) and the fresh report twice (with the current
    /// terms, then with none), and sometimes rolls a register back.
    function report(
        uint256 idSeed,
        uint32 metres,
        uint8 harsh,
        uint8 speeding,
        uint256 replaySeed,
        uint8 rollback,
        uint16 wait
    ) external {
        uint256 id = ids[idSeed % ids.length];
        vm.warp(block.timestamp + bound(wait, 0, 1 days));
        uint64 odometer = odometerOf[id] + uint64(bound(metres, 0, 500_000));
        uint32 h = harshOf[id] + uint32(bound(harsh, 0, 5));
        uint32 s = speedingOf[id] + uint32(bound(speeding, 0, 5));
        uint256 which = rollback % 8;
        if (which == 1 && odometerOf[id] > 0) odometer = odometerOf[id] - 1;
        else if (which == 2 && harshOf[id] > 0) h = harshOf[id] - 1;
        else if (which == 3 && speedingOf[id] > 0) s = speedingOf[id] - 1;
        else (odometerOf[id], harshOf[id], speedingOf[id]) = (odometer, h, s);

        IMotorInsurance.SignedTelematics memory fresh = _sign(keyOf[id], id, ++seqOf[id], odometer, h, s);
        signedSoFar.push(fresh);
        IMotorInsurance.SignedTelematics memory replayed = signedSoFar[replaySeed % signedSoFar.length];
        _relay(replayed, termsAtOffer[replayed.policyId]);
        _relay(fresh, motor.telematicsTerms(id));
        _relay(fresh, new bytes(46));
    }

    /// @dev Someone without the vehicle's key reports a clean, short trip to pay less: never settles.
    function forge(uint256 idSeed, uint32 metres) external {
        uint256 id = ids[idSeed % ids.length];
        IMotorInsurance.SignedTelematics memory t = _sign(
            FORGER_KEY, id, seqOf[id] + 1, odometerOf[id] + uint64(bound(metres, 0, 1_000)), harshOf[id], speedingOf[id]
        );
        IMotorInsurance.SignedTelematics[] memory one = new IMotorInsurance.SignedTelematics[](1);
        one[0] = t;
        if (motor.settle(PackedReports.pack(IMotorInsurance(address(motor)), one)) != 0) ++forgedSettled;
    }

    function _sign(uint256 key, uint256 id, uint64 seq, uint64 odometer, uint32 h, uint32 s)
        internal
        view
        returns (IMotorInsurance.SignedTelematics memory t)
    {
        t = IMotorInsurance.SignedTelematics(id, seq, uint64(block.timestamp), odometer, h, s, 0, 0);
        (t.r, t.vs) = vm.signCompact(key, motor.hashTelematics(id, seq, t.timestamp, odometer, h, s));
    }

    function _relay(IMotorInsurance.SignedTelematics memory t, bytes memory terms) internal {
        IMotorInsurance.Policy memory before = motor.policyOf(t.policyId);
        IMotorInsurance.SignedTelematics[] memory one = new IMotorInsurance.SignedTelematics[](1);
        one[0] = t;
        if (motor.settle(PackedReports.pack(one, terms)) == 0) return;
        IMotorInsurance.Policy memory after_ = motor.policyOf(t.policyId);
        if (++consumed[t.policyId][t.seq] > 1) ++doubleSettlement;
        if (
            after_.lastOdometer < before.lastOdometer || after_.lastHarsh < before.lastHarsh
                || after_.lastSpeeding < before.lastSpeeding
        ) ++registerRollbacks;
        if (after_.lastFactorBps < after_.minFactorBps || after_.lastFactorBps > after_.maxFactorBps) {
            ++factorsOutOfBounds;
        }
        if (after_.status == IMotorInsurance.PolicyStatus.Lapsed && before.status != after_.status) ++lapses;
        ghostCharged[t.policyId] += before.prepaid - after_.prepaid;
    }

    function topUp(uint256 idSeed, uint256 amount) external {
        uint256 id = ids[idSeed % ids.length];
        amount = bound(amount, 1, 1e9);
        token.mint(address(this), amount);
        token.approve(address(motor), amount);
        IMotorInsurance.Policy memory before = motor.policyOf(id);
        try motor.topUp(id, amount) {
            IMotorInsurance.Policy memory after_ = motor.policyOf(id);
            ghostDeposited[id] += amount;
            ghostCharged[id] += before.arrears - after_.arrears; // arrears paid are earned at once
            if (before.status != after_.status) ++reinstatements;
        } catch {}
    }

    function withdrawEarnings(uint256 idSeed) external {
        uint256 id = ids[idSeed % ids.length];
        vm.prank(INSURER);
        try motor.withdrawEarnings(id) returns (uint256 amount) {
            ghostWithdrawn[id] += amount;
        } catch {}
    }

    /// @dev A new policy with random terms for one of the vehicles (a vehicle may carry several policies).
    function open(uint256 vehicleSeed, uint128 rate, uint16 minF, uint16 maxF, uint16 step, uint256 deposit) external {
        if (ids.length >= MAX_POLICIES) return;
        uint256 key = vehicleKeys[vehicleSeed % vehicleKeys.length];
        rate = uint128(bound(rate, 1, 1e6));
        maxF = uint16(bound(maxF, 1, 50_000));
        minF = uint16(bound(minF, 1, maxF));
        deposit = bound(deposit, 1, 1e9);
        vm.prank(INSURER);
        uint256 id = motor.offer(HOLDER, vm.addr(key), address(token), rate, minF, maxF, step, 0, 0, 0, 1 hours);
        token.mint(HOLDER, deposit);
        vm.startPrank(HOLDER);
        token.approve(address(motor), deposit);
        motor.accept(id, deposit, 0, 0, 0);
        vm.stopPrank();
        ids.push(id);
        keyOf[id] = key;
        ghostDeposited[id] += deposit;
        termsAtOffer[id] = motor.telematicsTerms(id);
    }

    /// @dev Holder or insurer asks to close; after a random wait anyone closes. Only one call in four goes ahead,
    /// so most policies stay open long enough to lapse and recover.
    function close(uint256 idSeed, uint32 wait, bool byInsurer, uint8 chance) external {
        if (chance % 4 != 0) return;
        uint256 id = ids[idSeed % ids.length];
        vm.prank(byInsurer ? INSURER : HOLDER);
        try motor.requestClose(id) {} catch {}
        vm.warp(block.timestamp + bound(wait, 0, 2 days));
        try motor.close(id) returns (uint256 refund) {
            ghostRefunded[id] += refund;
            ++closes;
        } catch {}
    }
}

/// forge-config: default.invariant.runs = 8
/// forge-config: default.invariant.depth = 48
/// forge-config: ci.invariant.runs = 20
/// forge-config: ci.invariant.depth = 64
contract MotorInsuranceInvariantsTest is Test {
    DeviceRegistry internal registry;
    MotorInsurance internal motor;
    TestToken internal token;
    MotorHandler internal handler;

    function setUp() public {
        vm.warp(1_764_340_000);
        registry = new DeviceRegistry();
        motor = new MotorInsurance(registry);
        token = new TestToken();
        handler = new MotorHandler(motor, token);

        address insurer = handler.INSURER();
        address holder = handler.HOLDER();
        // Terms from gentle to steep; deposits small enough that policies lapse and get reinstated.
        uint16[4] memory minF = [uint16(8_000), 10_000, 5_000, 50_000];
        uint16[4] memory maxF = [uint16(20_000), 10_000, 50_000, 50_000];
        uint16[4] memory step = [uint16(1_000), 500, 65_535, 0];
        for (uint256 i = 0; i < 4; ++i) {
            uint256 key = 0x7E1E + i;
            address vehicle = _register(key);
            uint256 deposit = 50_000 * (i + 1);
            vm.prank(insurer);
            uint256 id = motor.offer(
                holder,
                vehicle,
                address(token),
                uint128(10 + 40 * i),
                minF[i],
                maxF[i],
                step[i],
                uint64(i * 1e6),
                uint32(i * 500),
                uint32(i * 200),
                1 hours
            );
            token.mint(holder, deposit);
            vm.startPrank(holder);
            token.approve(address(motor), deposit);
            motor.accept(id, deposit, uint64(i * 1e6), uint32(i * 500), uint32(i * 200));
            vm.stopPrank();
            handler.addPolicy(id, key, deposit);
        }
        targetContract(address(handler));
        bytes4[] memory selectors = new bytes4[](6);
        selectors[0] = MotorHandler.report.selector;
        selectors[1] = MotorHandler.forge.selector;
        selectors[2] = MotorHandler.topUp.selector;
        selectors[3] = MotorHandler.withdrawEarnings.selector;
        selectors[4] = MotorHandler.close.selector;
        selectors[5] = MotorHandler.open.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    function _register(uint256 key) internal returns (address device) {
        device = vm.addr(key);
        uint64 deadline = uint64(block.timestamp);
        bytes32 digest =
            registry.hashRegistration(device, address(this), IDeviceRegistry.DeviceKind.Vehicle, 0, deadline);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        registry.register(device, IDeviceRegistry.DeviceKind.Vehicle, 0, deadline, abi.encodePacked(r, s, v));
    }

    /// @dev Pool solvency: the token balance covers every holder's prepaid balance and every insurer's unwithdrawn
    /// premiums (and pull credits), exactly: nothing is created or lost.
    function invariant_BalanceCoversPrepaidAndUnwithdrawnPremiums() public view {
        uint256 owed;
        uint256 n = handler.idsLength();
        for (uint256 i = 0; i < n; ++i) {
            IMotorInsurance.Policy memory p = motor.policyOf(handler.ids(i));
            owed += p.prepaid + p.charged - p.withdrawn;
        }
        owed += motor.credited(address(token));
        uint256 held = token.balanceOf(address(motor));
        assertGe(held, owed, "balance covers liabilities");
        assertEq(held, owed, "nothing unaccounted for");
    }

    /// @dev Per policy: everything deposited was charged, is still prepaid, or was refunded, by the contract's
    /// figures and by the handler's ghost totals alike; the insurer never withdrew more than was charged.
    function invariant_ChargedPlusPrepaidPlusRefundedIsDeposited() public view {
        uint256 n = handler.idsLength();
        for (uint256 i = 0; i < n; ++i) {
            uint256 id = handler.ids(i);
            IMotorInsurance.Policy memory p = motor.policyOf(id);
            assertEq(
                handler.ghostCharged(id) + p.prepaid + handler.ghostRefunded(id), handler.ghostDeposited(id), "ghost"
            );
            assertEq(p.charged, handler.ghostCharged(id), "charged as observed");
            assertEq(p.deposited, handler.ghostDeposited(id), "deposited as observed");
            assertEq(p.refunded, handler.ghostRefunded(id), "refunded as observed");
            assertEq(p.withdrawn, handler.ghostWithdrawn(id), "withdrawn as observed");
            assertLe(p.withdrawn, p.charged, "withdrawn <= charged");
        }
    }

    /// @dev The behaviour factor stays within the bounds fixed at offer, after every settled report.
    function invariant_FactorWithinBounds() public view {
        assertEq(handler.factorsOutOfBounds(), 0, "factor within [min, max] after every report");
        uint256 n = handler.idsLength();
        for (uint256 i = 0; i < n; ++i) {
            IMotorInsurance.Policy memory p = motor.policyOf(handler.ids(i));
            assertGe(p.lastFactorBps, p.minFactorBps);
            assertLe(p.lastFactorBps, p.maxFactorBps);
        }
    }

    /// @dev Each (policy, seq) settles at most once although every report is relayed twice and old reports are
    /// replayed; registers never go back; forged reports never settle.
    function invariant_EachReportSettledOnce() public view {
        assertEq(handler.doubleSettlement(), 0, "each (policy, seq) settled once");
        assertEq(handler.registerRollbacks(), 0, "the settled registers only grow");
        assertEq(handler.forgedSettled(), 0, "a report not signed by the vehicle never settles");
    }

    /// @dev The handler reaches charging, lapsing, reinstatement, withdrawals and closing.
    function test_HandlerReachesEveryOutcome() public {
        // policy 0: 500 km clean at 10/km × 0.8 = 4000 of 50_000
        handler.report(0, 500_000, 0, 0, 0, 0, 1);
        assertEq(handler.ghostCharged(handler.ids(0)), 4_000);
        // policy 3: flat 5× at 130/km, 500 km = 325_000 > 200_000 → lapses
        handler.report(3, 500_000, 0, 0, 0, 0, 1);
        assertEq(handler.lapses(), 1);
        handler.report(3, 1, 0, 0, 0, 0, 1); // refused while lapsed
        handler.topUp(3, 200_000); // pays 125_000 arrears, reinstates
        assertEq(handler.reinstatements(), 1);
        handler.report(3, 0, 0, 0, 0, 1, 1); // odometer rollback refused
        handler.forge(0, 100);
        handler.withdrawEarnings(0);
        handler.close(0, 2 hours + 1, true, 0); // notice 1 h, then strictly after the 1 h grace
        handler.open(1, 7, 9_000, 12_000, 100, 1_000);
        handler.report(4, 100_000, 1, 0, 0, 0, 1); // 100 km, 1 event: 0.9 + 0.01 → 100 × 7 × 0.91 = 637
        assertEq(handler.ghostCharged(handler.ids(4)), 637);
        assertEq(handler.closes(), 1);
        assertEq(handler.ghostRefunded(handler.ids(0)), 46_000);
        assertEq(token.balanceOf(handler.INSURER()), 4_000);
        invariant_BalanceCoversPrepaidAndUnwithdrawnPremiums();
        invariant_ChargedPlusPrepaidPlusRefundedIsDeposited();
        invariant_FactorWithinBounds();
        invariant_EachReportSettledOnce();
    }
}

/// @dev An adversarial relayer. Each policy's vehicle drives (fuzzed metres and events) and signs an honest stream of
/// cumulative reports; the relayer relays any subset of them, in any order and batching, replays settled ones,
/// withholds others, and interleaves top-ups, close requests, closes and withdrawals. The ghost is the premium of the
/// totals of the newest settled report, by the formula written here; `flush` relays everything (topping up a lapse)
/// and records whether the honest premium was reached.
contract MotorRelayHandler is Test {
    MotorInsurance public motor;
    TestToken public token;
    address public constant INSURER = address(0x1A5E);
    address public constant HOLDER = address(0x401D);

    uint256[] public ids;
    mapping(uint256 id => uint256 key) internal keyOf;
    mapping(uint256 id => IMotorInsurance.SignedTelematics[]) internal stream;

    /// @dev Totals since the offer of the newest settled report (the ghost the premium is checked against).
    mapping(uint256 id => uint256) public ghostMetres;
    mapping(uint256 id => uint256) public ghostEvents;
    uint256 public ghostRegressions;
    uint256 public flushes;
    uint256 public flushMismatches;
    uint256 public settledReports;
    uint256 public closes;

    constructor(MotorInsurance motor_, TestToken token_) {
        motor = motor_;
        token = token_;
    }

    function idsLength() external view returns (uint256) {
        return ids.length;
    }

    function streamLength(uint256 id) external view returns (uint256) {
        return stream[id].length;
    }

    function addPolicy(uint256 id, uint256 key) external {
        ids.push(id);
        keyOf[id] = key;
    }

    /// @dev floor(F(metres, events)) of the policy's terms, as IMotorInsurance defines it.
    function premiumOf(uint256 id, uint256 metres, uint256 events) public view returns (uint256) {
        IMotorInsurance.Policy memory p = motor.policyOf(id);
        uint256 weighted = metres * p.minFactorBps + events * p.stepBps * 100_000;
        uint256 cap = metres * p.maxFactorBps;
        return (weighted < cap ? weighted : cap) * p.ratePerKm / 10_000_000;
    }

    /// @dev The premium of the newest report the honest stream holds that the policy can still settle (signed by
    /// closeAt when a close was requested).
    function honestPremium(uint256 id) public view returns (uint256) {
        IMotorInsurance.Policy memory p = motor.policyOf(id);
        IMotorInsurance.SignedTelematics[] storage s = stream[id];
        for (uint256 i = s.length; i > 0; --i) {
            IMotorInsurance.SignedTelematics storage t = s[i - 1];
            if (p.closeAt != 0 && t.timestamp > p.closeAt) continue;
            return premiumOf(
                id, t.odometer - p.startOdometer, uint256(t.harshBraking) + t.speeding - p.startHarsh - p.startSpeeding
            );
        }
        return 0;
    }

    /// @dev The vehicle drives and signs the next cumulative report; nothing is relayed.
    function drive(uint256 idSeed, uint32 metres, uint8 harsh, uint8 speeding, uint16 wait) external {
        uint256 id = ids[idSeed % ids.length];
        vm.warp(block.timestamp + bound(wait, 0, 6 hours));
        IMotorInsurance.SignedTelematics[] storage s = stream[id];
        IMotorInsurance.Policy memory p = motor.policyOf(id);
        (uint64 odometer, uint32 h, uint32 sp) = s.length == 0
            ? (p.startOdometer, p.startHarsh, p.startSpeeding)
            : (s[s.length - 1].odometer, s[s.length - 1].harshBraking, s[s.length - 1].speeding);
        odometer += uint64(bound(metres, 0, 80_000));
        h += uint32(bound(harsh, 0, 4));
        sp += uint32(bound(speeding, 0, 4));
        uint64 seq = uint64(s.length + 1);
        uint64 ts = uint64(block.timestamp);
        (bytes32 r, bytes32 vs) = vm.signCompact(keyOf[id], motor.hashTelematics(id, seq, ts, odometer, h, sp));
        s.push(IMotorInsurance.SignedTelematics(id, seq, ts, odometer, h, sp, r, vs));
    }

    /// @dev Relay `count` reports of the stream picked at random (repeats, any order, settled ones too) in one batch.
    function relay(uint256 idSeed, uint256 pickSeed, uint8 count) external {
        uint256 id = ids[idSeed % ids.length];
        uint256 n = stream[id].length;
        if (n == 0) return;
        count = uint8(bound(count, 1, 6));
        IMotorInsurance.SignedTelematics[] memory batch = new IMotorInsurance.SignedTelematics[](count);
        for (uint256 i = 0; i < count; ++i) {
            batch[i] = stream[id][uint256(keccak256(abi.encode(pickSeed, i))) % n];
        }
        _settle(id, batch);
    }

    /// @dev Relay every report of the stream in a random order, topping up a lapse first and after; once the
    /// policy settles again the premium must be the honest one.
    function flush(uint256 idSeed, uint256 orderSeed) external {
        uint256 id = ids[idSeed % ids.length];
        IMotorInsurance.PolicyStatus status = motor.policyOf(id).status;
        if (status != IMotorInsurance.PolicyStatus.Active && status != IMotorInsurance.PolicyStatus.Lapsed) return;
        uint256 n = stream[id].length;
        IMotorInsurance.SignedTelematics[] memory batch = new IMotorInsurance.SignedTelematics[](n);
        for (uint256 i = 0; i < n; ++i) {
            batch[i] = stream[id][i];
        }
        for (uint256 i = n; i > 1; --i) {
            uint256 j = uint256(keccak256(abi.encode(orderSeed, i))) % i;
            (batch[i - 1], batch[j]) = (batch[j], batch[i - 1]);
        }
        for (uint256 round = 0; round < 3; ++round) {
            _payArrears(id);
            _settle(id, batch);
        }
        _payArrears(id);
        if (motor.policyOf(id).status != IMotorInsurance.PolicyStatus.Active) return;
        ++flushes;
        IMotorInsurance.Policy memory p = motor.policyOf(id);
        if (p.charged + p.arrears != honestPremium(id)) ++flushMismatches;
    }

    function topUp(uint256 idSeed, uint256 amount) external {
        uint256 id = ids[idSeed % ids.length];
        _fund(id, bound(amount, 1, 1e7));
    }

    function requestClose(uint256 idSeed, bool byInsurer, uint8 chance) external {
        if (chance % 4 != 0) return;
        uint256 id = ids[idSeed % ids.length];
        vm.prank(byInsurer ? INSURER : HOLDER);
        try motor.requestClose(id) {} catch {}
    }

    /// @dev Anyone tries to close after a random wait (too early most of the time within the grace).
    function close(uint256 idSeed, uint32 wait) external {
        uint256 id = ids[idSeed % ids.length];
        vm.warp(block.timestamp + bound(wait, 0, 2 hours));
        try motor.close(id) {
            ++closes;
        } catch {}
    }

    function withdrawEarnings(uint256 idSeed) external {
        uint256 id = ids[idSeed % ids.length];
        vm.prank(INSURER);
        try motor.withdrawEarnings(id) {} catch {}
    }

    function _settle(uint256 id, IMotorInsurance.SignedTelematics[] memory batch) internal {
        settledReports += motor.settle(PackedReports.pack(IMotorInsurance(address(motor)), batch));
        IMotorInsurance.Policy memory p = motor.policyOf(id);
        uint256 metres = p.lastOdometer - p.startOdometer;
        uint256 events = uint256(p.lastHarsh) + p.lastSpeeding - p.startHarsh - p.startSpeeding;
        if (metres < ghostMetres[id] || events < ghostEvents[id]) ++ghostRegressions;
        (ghostMetres[id], ghostEvents[id]) = (metres, events);
    }

    function _payArrears(uint256 id) internal {
        IMotorInsurance.Policy memory p = motor.policyOf(id);
        if (p.status == IMotorInsurance.PolicyStatus.Lapsed) _fund(id, p.arrears + 1e6);
    }

    function _fund(uint256 id, uint256 amount) internal {
        token.mint(address(this), amount);
        token.approve(address(motor), amount);
        try motor.topUp(id, amount) {} catch {}
    }
}

/// forge-config: default.invariant.runs = 8
/// forge-config: default.invariant.depth = 48
/// forge-config: ci.invariant.runs = 20
/// forge-config: ci.invariant.depth = 64
contract MotorRelayInvariantsTest is Test {
    DeviceRegistry internal registry;
    MotorInsurance internal motor;
    TestToken internal token;
    MotorRelayHandler internal handler;

    function setUp() public {
        vm.warp(1_764_340_000);
        registry = new DeviceRegistry();
        motor = new MotorInsurance(registry);
        token = new TestToken();
        handler = new MotorRelayHandler(motor, token);

        // A steep factor that hits its cap, a gentle one, and a tiny rate where every report rounds to 0 alone.
        uint128[3] memory rate = [uint128(1_000), 37, 1];
        uint16[3] memory minF = [uint16(10_000), 8_000, 8_000];
        uint16[3] memory maxF = [uint16(20_000), 15_000, 8_000];
        uint16[3] memory step = [uint16(1_000), 250, 0];
        for (uint256 i = 0; i < 3; ++i) {
            uint256 key = 0x7E1E + i;
            address vehicle = _register(key);
            vm.prank(handler.INSURER());
            uint256 id = motor.offer(
                handler.HOLDER(),
                vehicle,
                address(token),
                rate[i],
                minF[i],
                maxF[i],
                step[i],
                uint64(i * 1e6),
                uint32(i * 50),
                uint32(i * 20),
                2 hours
            );
            uint256 deposit = 400_000 / (i + 1);
            token.mint(handler.HOLDER(), deposit);
            vm.startPrank(handler.HOLDER());
            token.approve(address(motor), deposit);
            motor.accept(id, deposit, uint64(i * 1e6), uint32(i * 50), uint32(i * 20));
            vm.stopPrank();
            handler.addPolicy(id, key);
        }
        targetContract(address(handler));
        bytes4[] memory selectors = new bytes4[](8);
        selectors[0] = MotorRelayHandler.drive.selector;
        selectors[1] = MotorRelayHandler.relay.selector;
        selectors[2] = MotorRelayHandler.flush.selector;
        selectors[3] = MotorRelayHandler.topUp.selector;
        selectors[4] = MotorRelayHandler.requestClose.selector;
        selectors[5] = MotorRelayHandler.close.selector;
        selectors[6] = MotorRelayHandler.withdrawEarnings.selector;
        selectors[7] = MotorRelayHandler.drive.selector; // driving twice as often as anything else
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    function _register(uint256 key) internal returns (address device) {
        device = vm.addr(key);
        uint64 deadline = uint64(block.timestamp);
        bytes32 digest =
            registry.hashRegistration(device, address(this), IDeviceRegistry.DeviceKind.Vehicle, 0, deadline);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        registry.register(device, IDeviceRegistry.DeviceKind.Vehicle, 0, deadline, abi.encodePacked(r, s, v));
    }

    /// @dev Whatever was relayed, the premiums of a policy so far (earned plus owed) are floor(F) of the totals of
    /// its newest settled report, the ghost; and never more than the honest premium of the whole stream.
    function invariant_PremiumIsTheFormulaOfTheNewestSettledTotals() public view {
        uint256 n = handler.idsLength();
        for (uint256 i = 0; i < n; ++i) {
            uint256 id = handler.ids(i);
            IMotorInsurance.Policy memory p = motor.policyOf(id);
            uint256 expected = handler.premiumOf(id, handler.ghostMetres(id), handler.ghostEvents(id));
            assertEq(p.charged + p.arrears, expected, "premium = floor(F(totals of the newest settled report))");
            assertLe(p.charged + p.arrears, handler.honestPremium(id), "never more than the honest premium");
        }
        assertEq(handler.ghostRegressions(), 0, "the settled totals only grow");
    }

    /// @dev Every flush that left the policy running reached the honest premium of the stream.
    function invariant_RelayingEverythingReachesTheHonestPremium() public view {
        assertEq(handler.flushMismatches(), 0, "after all reports are relayed the premium is the honest one");
    }

    /// @dev The token balance covers every prepaid balance, every unwithdrawn earning and every credit.
    function invariant_BalanceCoversObligations() public view {
        uint256 owed = motor.credited(address(token));
        uint256 n = handler.idsLength();
        for (uint256 i = 0; i < n; ++i) {
            IMotorInsurance.Policy memory p = motor.policyOf(handler.ids(i));
            owed += p.prepaid + p.charged - p.withdrawn;
            assertEq(p.charged + p.prepaid + p.refunded, p.deposited, "charged + prepaid + refunded = deposited");
        }
        assertGe(token.balanceOf(address(motor)), owed, "balance covers obligations");
    }

    /// @dev A hand-picked run: only the newest of three reports is relayed, then an older one (replayed), then a flush.
    function test_RelayHandlerReachesEveryOutcome() public {
        handler.drive(0, 50_000, 0, 0, 60);
        handler.drive(0, 1_000, 4, 4, 60);
        handler.drive(0, 10_000, 1, 0, 60);
        handler.relay(0, 0, 1);
        handler.flush(0, 7);
        assertEq(handler.flushes(), 1);
        handler.requestClose(0, false, 0);
        handler.drive(0, 10_000, 0, 0, 3 hours); // signed after closeAt: AfterEnd
        handler.flush(0, 1);
        handler.close(0, 2 hours);
        assertEq(handler.closes(), 1);
        invariant_PremiumIsTheFormulaOfTheNewestSettledTotals();
        invariant_RelayingEverythingReachesTheHonestPremium();
        invariant_BalanceCoversObligations();
    }
}
