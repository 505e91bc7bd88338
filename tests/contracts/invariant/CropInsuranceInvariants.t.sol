// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "forge-std/Test.sol";
import {Vm} from "forge-std/Vm.sol";

import {CropInsurance} from "../../../contracts/CropInsurance.sol";
import {DeviceRegistry} from "../../../contracts/DeviceRegistry.sol";
import {ICropInsurance} from "../../../contracts/interfaces/ICropInsurance.sol";
import {IDeviceRegistry} from "../../../contracts/interfaces/IDeviceRegistry.sol";
import {TestToken} from "../../../contracts/test/TestToken.sol";
import {RevertingToken} from "../utils/Hostile.sol";

/// @dev Drives CropInsurance through random seasons, cover purchases, station observations (fresh, replayed and
/// rolled back), pool deposits and withdrawals, finalizations, payout slices, credit withdrawals, a token that
/// sometimes refuses transfers, and time jumps — keeping ghost totals of every unit that moved.
contract CropHandler is Test {
    bytes32 internal constant PAYOUT_SENT = keccak256("PayoutSent(uint256,address,uint256)");
    bytes32 internal constant COVER_EXPIRED = keccak256("CoverExpired(uint256)");
    address public constant INSURER = address(0x1550);
    uint256 public constant STATIONS = 5;

    CropInsurance public crop;
    TestToken public good;
    RevertingToken public flaky;
    uint256[2] public pools; // pool 0 in `good`, pool 1 in `flaky`

    uint256[] internal stationKeys;
    address[] public stations;
    mapping(address station => uint64) internal seqOf;
    mapping(address station => uint64) internal rainOf;
    ICropInsurance.SignedObservation[] internal signedSoFar;

    uint256[] public seasons;
    uint256[] public policies;
    address[] public beneficiaries;

    mapping(uint256 poolId => uint256) public ghostDeposited;
    mapping(uint256 poolId => uint256) public ghostPremiums;
    mapping(uint256 poolId => uint256) public ghostOwnerWithdrawn;
    mapping(uint256 poolId => uint256) public ghostPaid;
    mapping(uint256 poolId => uint256) public ghostLocked;
    mapping(address token => uint256) public ghostClaimed;
    mapping(uint256 policyId => uint256) public settledEvents;
    uint256 public doubleSettlements;
    uint256 public wrongPayouts;
    uint256 public triggeredSeasons;
    uint256 public quietSeasons;

    constructor(CropInsurance crop_, DeviceRegistry registry, TestToken good_, RevertingToken flaky_) {
        crop = crop_;
        good = good_;
        flaky = flaky_;
        vm.startPrank(INSURER);
        pools[0] = crop.createPool(address(good));
        pools[1] = crop.createPool(address(flaky));
        vm.stopPrank();
        for (uint256 i = 0; i < STATIONS; ++i) {
            uint256 key = 0xC0FFEE + i;
            address station = vm.addr(key);
            uint64 deadline = uint64(block.timestamp);
            bytes32 digest = registry.hashRegistration(
                station, address(this), IDeviceRegistry.DeviceKind.WeatherStation, 0, deadline
            );
            (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
            registry.register(
                station, IDeviceRegistry.DeviceKind.WeatherStation, 0, deadline, abi.encodePacked(r, s, v)
            );
            stationKeys.push(key);
            stations.push(station);
        }
        for (uint256 i = 0; i < 3; ++i) {
            beneficiaries.push(address(uint160(0xBE0 + i)));
        }
    }

    function seasonsLength() external view returns (uint256) {
        return seasons.length;
    }

    function policiesLength() external view returns (uint256) {
        return policies.length;
    }

    function beneficiariesLength() external view returns (uint256) {
        return beneficiaries.length;
    }

    function _mint(address token, address to, uint256 amount) internal {
        if (token == address(good)) good.mint(to, amount);
        else flaky.mint(to, amount);
    }

    // ---------------------------------------------------------------- insurer

    function deposit(uint256 poolSeed, uint256 amount) public {
        uint256 poolId = pools[poolSeed % 2];
        amount = bound(amount, 1, 1e24);
        address token = crop.poolOf(poolId).token;
        if (token == address(flaky) && flaky.broken()) return;
        _mint(token, INSURER, amount);
        vm.startPrank(INSURER);
        good.approve(address(crop), type(uint256).max);
        flaky.approve(address(crop), type(uint256).max);
        crop.deposit(poolId, amount);
        vm.stopPrank();
        ghostDeposited[poolId] += amount;
    }

    function withdrawPool(uint256 poolSeed, uint256 amount) external {
        uint256 poolId = pools[poolSeed % 2];
        ICropInsurance.Pool memory p = crop.poolOf(poolId);
        amount = bound(amount, 0, p.assets - p.locked + 1); // sometimes one too many: must revert
        vm.prank(INSURER);
        try crop.withdraw(poolId, amount) {
            ghostOwnerWithdrawn[poolId] += amount;
        } catch {}
    }

    function createSeason(uint256 poolSeed, uint256 nSeed, uint256 kSeed, bool heat, uint256 rotate) external {
        uint256 n = bound(nSeed, 3, STATIONS);
        address[] memory set = new address[](n);
        for (uint256 i = 0; i < n; ++i) {
            set[i] = stations[(rotate % STATIONS + i) % STATIONS];
        }
        uint64 start = uint64(block.timestamp + 12 hours);
        ICropInsurance.SeasonTerms memory t = ICropInsurance.SeasonTerms({
            start: start,
            end: start + 2 days,
            saleEnd: start,
            coverageSlack: 1 days,
            finalizeDelay: 1 hours,
            index: heat ? ICropInsurance.Index.HotDaysAbove : ICropInsurance.Index.RainfallBelow,
            threshold: heat ? int64(3_000) : int64(5_000),
            triggerDays: 1,
            premiumBps: 700,
            k: uint8(bound(kSeed, 2, n - 1)),
            region: bytes32(rotate),
            stations: set
        });
        vm.prank(INSURER);
        try crop.createSeason(pools[poolSeed % 2], t) returns (uint256 seasonId) {
            seasons.push(seasonId);
        } catch {}
    }

    // ---------------------------------------------------------------- farmers

    function buyCover(uint256 seasonSeed, uint256 cover, uint256 beneficiarySeed) external {
        if (seasons.length == 0) return;
        uint256 seasonId = seasons[seasonSeed % seasons.length];
        ICropInsurance.Season memory s = crop.seasonOf(seasonId);
        ICropInsurance.Pool memory p = crop.poolOf(s.poolId);
        cover = bound(cover, 1, p.assets - p.locked + p.assets / 10 + 10); // sometimes beyond capacity
        uint256 premium = (cover * 700 + 9_999) / 10_000;
        address buyer = address(0xB0B);
        if (p.token == address(flaky) && flaky.broken()) return;
        _mint(p.token, buyer, premium);
        vm.startPrank(buyer);
        good.approve(address(crop), type(uint256).max);
        flaky.approve(address(crop), type(uint256).max);
        try crop.buyCover(seasonId, cover, beneficiaries[beneficiarySeed % beneficiaries.length]) returns (
            uint256 policyId
        ) {
            policies.push(policyId);
            ghostPremiums[s.poolId] += premium;
            ghostLocked[s.poolId] += cover;
        } catch {
            // the unused premium stays with the buyer; burn nothing, it is not the pool's
        }
        vm.stopPrank();
    }

    function withdrawCredit(uint256 beneficiarySeed, bool flakyToken) external {
        address who = beneficiaries[beneficiarySeed % beneficiaries.length];
        address token = flakyToken ? address(flaky) : address(good);
        vm.prank(who);
        try crop.withdraw(token) returns (uint256 amount) {
            ghostClaimed[token] += amount;
        } catch {}
    }

    // ---------------------------------------------------------------- stations and relayers

    /// @dev A station signs its next observation now; the relayed batch also carries a replayed earlier
    /// observation and, sometimes, a rolled-back register.
    function observe(uint256 stationSeed, uint64 rain, int32 temperature, uint32 wait, uint256 replaySeed, bool rollback)
        external
    {
        vm.warp(block.timestamp + bound(wait, 0, 6 hours));
        uint256 i = stationSeed % STATIONS;
        address station = stations[i];
        uint64 value = rainOf[station] + uint64(bound(rain, 0, 4_000));
        if (rollback && rainOf[station] > 0) value = rainOf[station] - 1;
        else rainOf[station] = value;
        uint64 seq = ++seqOf[station];
        int32 temp = int32(bound(temperature, -1_000, 4_500));
        bytes32 digest = crop.hashObservation(station, seq, uint64(block.timestamp), value, temp);
        (bytes32 r, bytes32 vs) = vm.signCompact(stationKeys[i], digest);
        ICropInsurance.SignedObservation memory fresh =
            ICropInsurance.SignedObservation(station, seq, uint64(block.timestamp), value, temp, r, vs);
        signedSoFar.push(fresh);
        ICropInsurance.SignedObservation[] memory batch = new ICropInsurance.SignedObservation[](2);
        batch[0] = signedSoFar[replaySeed % signedSoFar.length];
        batch[1] = fresh;
        crop.record(batch);
    }

    /// @dev Every station observes now (one relayed batch), each with its own rain since its last observation.
    function observeAll(uint64 rain, int32 temperature, uint32 wait) external {
        vm.warp(block.timestamp + bound(wait, 0, 12 hours));
        ICropInsurance.SignedObservation[] memory batch = new ICropInsurance.SignedObservation[](STATIONS);
        for (uint256 i = 0; i < STATIONS; ++i) {
            address station = stations[i];
            uint64 value = rainOf[station] + uint64(bound(uint256(keccak256(abi.encode(rain, i))), 0, 3_000));
            rainOf[station] = value;
            uint64 seq = ++seqOf[station];
            int32 temp = int32(bound(temperature, -1_000, 4_500)) + int32(int256(i) * 100);
            bytes32 digest = crop.hashObservation(station, seq, uint64(block.timestamp), value, temp);
            (bytes32 r, bytes32 vs) = vm.signCompact(stationKeys[i], digest);
            batch[i] = ICropInsurance.SignedObservation(station, seq, uint64(block.timestamp), value, temp, r, vs);
            signedSoFar.push(batch[i]);
        }
        crop.record(batch);
    }

    function warp(uint32 wait) external {
        vm.warp(block.timestamp + bound(wait, 0, 1 days));
    }

    function toggleFlaky(bool broken) external {
        flaky.setBroken(broken);
    }

    // ---------------------------------------------------------------- settlement

    /// @dev `wait`: first move time to the moment the season can be finalized (if it lies ahead).
    function finalize(uint256 seasonSeed, bool wait) external {
        if (seasons.length == 0) return;
        uint256 seasonId = seasons[seasonSeed % seasons.length];
        ICropInsurance.SeasonTerms memory t = crop.seasonOf(seasonId).terms;
        uint256 at = uint256(t.end) + t.finalizeDelay;
        if (wait && block.timestamp < at) vm.warp(at);
        vm.recordLogs();
        try crop.finalize(seasonId) {
            if (crop.seasonOf(seasonId).triggered) ++triggeredSeasons;
            else ++quietSeasons;
        } catch {}
        _account(seasonId, vm.getRecordedLogs());
    }

    function payOut(uint256 seasonSeed, uint256 maxPolicies) external {
        if (seasons.length == 0) return;
        uint256 seasonId = seasons[seasonSeed % seasons.length];
        vm.recordLogs();
        try crop.payOut(seasonId, bound(maxPolicies, 0, 5)) {} catch {}
        _account(seasonId, vm.getRecordedLogs());
    }

    /// @dev Count each PayoutSent / CoverExpired per policy and check the payout is the policy's cover.
    function _account(uint256 seasonId, Vm.Log[] memory logs) internal {
        uint256 poolId = crop.seasonOf(seasonId).poolId;
        for (uint256 i = 0; i < logs.length; ++i) {
            if (logs[i].emitter != address(crop)) continue;
            bytes32 topic = logs[i].topics[0];
            if (topic != PAYOUT_SENT && topic != COVER_EXPIRED) continue;
            uint256 policyId = uint256(logs[i].topics[1]);
            ICropInsurance.Cover memory c = crop.coverOf(policyId);
            if (++settledEvents[policyId] > 1) ++doubleSettlements;
            ghostLocked[poolId] -= c.cover;
            if (topic == PAYOUT_SENT) {
                uint256 amount = abi.decode(logs[i].data, (uint256));
                if (amount != c.cover || c.status != ICropInsurance.CoverStatus.Paid) ++wrongPayouts;
                ghostPaid[poolId] += amount;
            } else if (c.status != ICropInsurance.CoverStatus.Expired) {
                ++wrongPayouts;
            }
        }
    }
}

/// forge-config: default.invariant.runs = 16
/// forge-config: default.invariant.depth = 48
/// forge-config: default.invariant.fail-on-revert = true
/// forge-config: ci.invariant.fail-on-revert = true
/// forge-config: ci.invariant.runs = 48
/// forge-config: ci.invariant.depth = 96
contract CropInsuranceInvariantsTest is Test {
    CropInsurance internal crop;
    CropHandler internal handler;
    TestToken internal good;
    RevertingToken internal flaky;

    function setUp() public {
        vm.warp(1_764_340_000);
        DeviceRegistry registry = new DeviceRegistry();
        crop = new CropInsurance(registry);
        good = new TestToken();
        flaky = new RevertingToken();
        handler = new CropHandler(crop, registry, good, flaky);
        handler.deposit(0, 50_000);
        handler.deposit(1, 50_000);

        targetContract(address(handler));
        bytes4[] memory selectors = new bytes4[](12);
        selectors[0] = CropHandler.deposit.selector;
        selectors[1] = CropHandler.withdrawPool.selector;
        selectors[2] = CropHandler.createSeason.selector;
        selectors[3] = CropHandler.buyCover.selector;
        selectors[4] = CropHandler.withdrawCredit.selector;
        selectors[5] = CropHandler.observe.selector;
        selectors[6] = CropHandler.observe.selector; // observations are the bulk of the traffic
        selectors[7] = CropHandler.warp.selector;
        selectors[8] = CropHandler.toggleFlaky.selector;
        selectors[9] = CropHandler.finalize.selector;
        selectors[10] = CropHandler.payOut.selector;
        selectors[11] = CropHandler.observeAll.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    function _credits(address token) internal view returns (uint256 sum) {
        uint256 n = handler.beneficiariesLength();
        for (uint256 i = 0; i < n; ++i) {
            sum += crop.withdrawable(token, handler.beneficiaries(i));
        }
    }

    /// @dev Solvency: the contract holds every pool's assets plus every pull credit, per token; and each pool can
    /// pay all the cover it sold (locked ≤ assets), with locked = Σ cover of unsettled policies.
    function invariant_Solvency() public view {
        for (uint256 t = 0; t < 2; ++t) {
            uint256 poolId = handler.pools(t);
            ICropInsurance.Pool memory p = crop.poolOf(poolId);
            address token = p.token;
            uint256 held = token == address(good) ? good.balanceOf(address(crop)) : flaky.balanceOf(address(crop));
            assertGe(held, p.assets + _credits(token), "balance covers assets + credits");
            assertEq(held, p.assets + _credits(token), "nothing unaccounted for");
            assertLe(p.locked, p.assets, "locked <= assets");
            assertEq(p.locked, handler.ghostLocked(poolId), "locked = cover of unsettled policies");
            assertEq(
                p.assets,
                handler.ghostDeposited(poolId) + handler.ghostPremiums(poolId) - handler.ghostOwnerWithdrawn(poolId)
                    - handler.ghostPaid(poolId),
                "assets = deposits + premiums - withdrawals - payouts"
            );
        }
    }

    /// @dev Each payout equals its cover; each policy is paid or expired at most once; beneficiaries received
    /// (pushed or credited) exactly the sum of paid covers.
    function invariant_PayoutsAreExactlyTheCoverOnce() public view {
        assertEq(handler.doubleSettlements(), 0, "each policy settled once");
        assertEq(handler.wrongPayouts(), 0, "payout = cover, status matches");
        uint256 received;
        uint256 n = handler.beneficiariesLength();
        for (uint256 i = 0; i < n; ++i) {
            address b = handler.beneficiaries(i);
            received += good.balanceOf(b) + flaky.balanceOf(b);
        }
        received += _credits(address(good)) + _credits(address(flaky));
        assertEq(received, handler.ghostPaid(handler.pools(0)) + handler.ghostPaid(handler.pools(1)));
        uint256 paidCover;
        uint256 m = handler.policiesLength();
        for (uint256 i = 0; i < m; ++i) {
            ICropInsurance.Cover memory c = crop.coverOf(handler.policies(i));
            if (c.status == ICropInsurance.CoverStatus.Paid) paidCover += c.cover;
        }
        assertEq(received, paidCover, "paid = sum of the covers of paid policies, never more");
    }

    /// @dev The handler reaches seasons that trigger and that do not, failed pushes and credit withdrawals.
    function test_HandlerReachesEveryOutcome() public {
        handler.createSeason(0, 3, 2, false, 0); // rain season on stations 0..2, pool in `good`
        handler.createSeason(1, 3, 2, false, 0); // same stations, pool in `flaky`
        handler.buyCover(0, 10_000, 0);
        handler.buyCover(1, 20_000, 1);
        handler.warp(13 hours); // 1 h after the start
        for (uint256 s = 0; s < 3; ++s) {
            handler.observe(s, 0, 2_000, 0, 0, false);
        }
        handler.warp(1 days);
        handler.warp(12 hours); // 11 h before the end: within the 1-day slack
        for (uint256 s = 0; s < 3; ++s) {
            handler.observe(s, 100, 2_000, 0, 0, false); // 1 mm in the season: drought
        }
        handler.warp(12 hours);
        handler.finalize(0, false);
        handler.toggleFlaky(true);
        handler.finalize(1, false);
        assertEq(handler.triggeredSeasons(), 2);
        assertGt(crop.withdrawable(address(flaky), handler.beneficiaries(1)), 0, "failed push credited");
        handler.toggleFlaky(false);
        handler.withdrawCredit(1, true);
        assertEq(flaky.balanceOf(handler.beneficiaries(1)), 20_000);
        assertEq(good.balanceOf(handler.beneficiaries(0)), 10_000);

        handler.createSeason(0, 3, 2, false, 0);
        handler.buyCover(2, 5_000, 2);
        handler.warp(13 hours);
        for (uint256 s = 0; s < 3; ++s) {
            handler.observe(s, 0, 2_000, 0, 0, false);
        }
        handler.warp(1 days);
        handler.warp(12 hours);
        for (uint256 s = 0; s < 3; ++s) {
            handler.observe(s, 4_000, 2_000, 0, 0, false);
            handler.observe(s, 4_000, 2_000, 0, 0, false); // 80 mm: no drought
        }
        handler.warp(12 hours);
        handler.finalize(2, false);
        assertEq(handler.quietSeasons(), 1);
        assertEq(good.balanceOf(handler.beneficiaries(2)), 0);
        invariant_Solvency();
        invariant_PayoutsAreExactlyTheCoverOnce();
    }
}
