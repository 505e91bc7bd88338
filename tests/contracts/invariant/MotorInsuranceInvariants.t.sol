// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "forge-std/Test.sol";

import {DeviceRegistry} from "../../../contracts/DeviceRegistry.sol";
import {MotorInsurance} from "../../../contracts/MotorInsurance.sol";
import {IDeviceRegistry} from "../../../contracts/interfaces/IDeviceRegistry.sol";
import {IMotorInsurance} from "../../../contracts/interfaces/IMotorInsurance.sol";
import {TestToken} from "../../../contracts/test/TestToken.sol";

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
    }

    /// @dev The vehicle signs new cumulative registers; the batch also carries a replay of an earlier report and
    /// the fresh report twice, and sometimes rolls a register back.
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
        _relay(signedSoFar[replaySeed % signedSoFar.length]);
        _relay(fresh);
        _relay(fresh);
    }

    /// @dev Someone without the vehicle's key reports a clean, short trip to pay less: never settles.
    function forge(uint256 idSeed, uint32 metres) external {
        uint256 id = ids[idSeed % ids.length];
        IMotorInsurance.SignedTelematics memory t = _sign(
            FORGER_KEY, id, seqOf[id] + 1, odometerOf[id] + uint64(bound(metres, 0, 1_000)), harshOf[id], speedingOf[id]
        );
        IMotorInsurance.SignedTelematics[] memory one = new IMotorInsurance.SignedTelematics[](1);
        one[0] = t;
        if (motor.settle(one) != 0) ++forgedSettled;
    }

    function _sign(uint256 key, uint256 id, uint64 seq, uint64 odometer, uint32 h, uint32 s)
        internal
        view
        returns (IMotorInsurance.SignedTelematics memory t)
    {
        t = IMotorInsurance.SignedTelematics(id, seq, uint64(block.timestamp), odometer, h, s, 0, 0);
        (t.r, t.vs) = vm.signCompact(key, motor.hashTelematics(id, seq, t.timestamp, odometer, h, s));
    }

    function _relay(IMotorInsurance.SignedTelematics memory t) internal {
        IMotorInsurance.Policy memory before = motor.policyOf(t.policyId);
        IMotorInsurance.SignedTelematics[] memory one = new IMotorInsurance.SignedTelematics[](1);
        one[0] = t;
        if (motor.settle(one) == 0) return;
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
        handler.close(0, 2 hours, true, 0);
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
