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
import {PackedObservations} from "../utils/PackedObservations.sol";

/// @dev Drives CropInsurance through random seasons, cover purchases, pool deposits and withdrawals, finalizations,
/// payout pages, credit withdrawals, a token that sometimes refuses transfers and time jumps. The stations are
/// honest: each signs one gapless stream of observations. The relayer is adversarial: it relays any subset of the
/// signed observations, in any order and batching (replays and gaps included), interleaved with everything else.
/// Ghosts: every unit that moved, and each season's verdict computed from the stations' full honest streams.
contract CropHandler is Test {
    bytes32 internal constant PAYOUT_SENT = keccak256("PayoutSent(uint256,address,uint256)");
    bytes32 internal constant STATION_VERDICT = keccak256("StationVerdict(uint256,address,uint8,int256)");
    address public constant INSURER = address(0x1550);
    uint256 public constant STATIONS = 5;

    struct Observation {
        uint64 timestamp;
        uint64 rainfall;
        int32 maxTemperature;
        bytes32 r;
        bytes32 vs;
    }

    CropInsurance public crop;
    TestToken public good;
    RevertingToken public flaky;
    uint256[2] public pools; // pool 0 in `good`, pool 1 in `flaky`

    uint256[] internal stationKeys;
    address[] public stations;
    /// @dev Each station's honest stream: seq i is element i − 1.
    mapping(address station => Observation[]) internal streams;

    uint256[] public seasons;
    uint256[] public policies;
    address[] public beneficiaries;

    mapping(uint256 poolId => uint256) public ghostDeposited;
    mapping(uint256 poolId => uint256) public ghostPremiums;
    mapping(uint256 poolId => uint256) public ghostOwnerWithdrawn;
    mapping(uint256 poolId => uint256) public ghostTriggeredCover;
    mapping(uint256 poolId => uint256) public ghostLocked;
    mapping(uint256 seasonId => uint256) public ghostSeasonCover;
    mapping(address token => uint256) public ghostDue;
    mapping(address token => uint256) public ghostPaidOut;
    mapping(uint256 policyId => uint256) public payoutEvents;
    uint256 public doublePayouts;
    uint256 public wrongPayouts;
    uint256 public triggeredSeasons;
    uint256 public quietSeasons;
    uint256 public outOfOrderRelays; // items relayed above a station's next seq (gaps) or at or below it (replays)
    /// @dev A station voted other than its honest stream says, and not by abstaining.
    uint256 public verdictsNotHonest;
    /// @dev A station had every observation up to its first after the end relayed, yet its vote differs.
    uint256 public completeStationsNotHonest;
    /// @dev The season outcome differs from the honest one although every station's stream was complete on chain.
    uint256 public completeSeasonsNotHonest;
    uint256 public completeStationVotes;
    uint256 public abstainedForWithheld;

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
            // The handler owns the stations and lets the insurer name them in seasons.
            crop.allowInsurer(station, INSURER, true);
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

    function signedCount(uint256 i) external view returns (uint256) {
        return streams[stations[i]].length;
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
        crop.depositToPool(poolId, amount);
        vm.stopPrank();
        ghostDeposited[poolId] += amount;
    }

    function withdrawPool(uint256 poolSeed, uint256 amount) external {
        uint256 poolId = pools[poolSeed % 2];
        ICropInsurance.Pool memory p = crop.poolOf(poolId);
        amount = bound(amount, 0, p.assets - p.locked + 1); // sometimes one too many: must revert
        vm.prank(INSURER);
        try crop.withdrawFromPool(poolId, amount) {
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
            ghostSeasonCover[seasonId] += cover;
        } catch {
            // the unused premium stays with the buyer; burn nothing, it is not the pool's
        }
        vm.stopPrank();
    }

    function withdrawCredit(uint256 beneficiarySeed, bool flakyToken) external {
        address who = beneficiaries[beneficiarySeed % beneficiaries.length];
        address token = flakyToken ? address(flaky) : address(good);
        vm.prank(who);
        try crop.withdraw(token) {} catch {}
    }

    // ---------------------------------------------------------------- honest stations

    /// @dev Station `i` signs its next observation now: rain since its last one and the day's highest temperature.
    function _sign(uint256 i, uint256 rain, int256 temperature) internal {
        address station = stations[i];
        Observation[] storage stream = streams[station];
        uint64 seq = uint64(stream.length + 1);
        uint64 value = (stream.length == 0 ? 0 : stream[stream.length - 1].rainfall) + uint64(bound(rain, 0, 4_000));
        int32 temp = int32(bound(temperature, -1_000, 4_500));
        uint64 ts = uint64(block.timestamp);
        bytes32 digest = crop.hashObservation(station, seq, ts, value, temp);
        (bytes32 r, bytes32 vs) = vm.signCompact(stationKeys[i], digest);
        stream.push(Observation(ts, value, temp, r, vs));
    }

    function sign(uint256 stationSeed, uint64 rain, int32 temperature, uint32 wait) external {
        vm.warp(block.timestamp + bound(wait, 0, 6 hours));
        _sign(stationSeed % STATIONS, rain, temperature);
    }

    /// @dev Every station observes now, each with its own rain and temperature.
    function signAll(uint64 rain, int32 temperature, uint32 wait) external {
        vm.warp(block.timestamp + bound(wait, 0, 12 hours));
        _signAll(rain, temperature);
    }

    function _signAll(uint256 rain, int256 temperature) internal {
        for (uint256 i = 0; i < STATIONS; ++i) {
            _sign(i, uint256(keccak256(abi.encode(rain, i))) % 3_001, temperature + int256(i) * 100);
        }
    }

    // ---------------------------------------------------------------- the adversarial relayer

    function _signed(address station, uint64 seq) internal view returns (ICropInsurance.SignedObservation memory) {
        Observation storage o = streams[station][seq - 1];
        return ICropInsurance.SignedObservation(station, seq, o.timestamp, o.rainfall, o.maxTemperature, o.r, o.vs);
    }

    /// @dev One batch of `count` signed observations the relayer picks: each item a station and a seq from its
    /// stream, mostly near the station's next seq (the next one itself, a later one = a gap, an earlier one = a
    /// replay), in the fuzzed order.
    function relay(uint256 seed, uint8 count) external {
        uint256 n = bound(count, 1, 8);
        ICropInsurance.SignedObservation[] memory batch = new ICropInsurance.SignedObservation[](n);
        uint256 m = 0;
        for (uint256 j = 0; j < n; ++j) {
            uint256 r = uint256(keccak256(abi.encode(seed, j)));
            address station = stations[r % STATIONS];
            uint256 len = streams[station].length;
            if (len == 0) continue;
            uint256 next = crop.stationState(station).lastSeq + 1;
            uint256 seq;
            uint256 pick = (r >> 8) % 8;
            if (pick < 4) seq = next; // in order
            else if (pick < 7) seq = next + 1 + (r >> 16) % 3; // ahead: a gap
            else seq = 1 + (r >> 16) % len; // anything, replays included
            if (seq > len) seq = len;
            if (seq != next) ++outOfOrderRelays;
            batch[m++] = _signed(station, uint64(seq));
        }
        assembly ("memory-safe") {
            mstore(batch, m)
        }
        if (m != 0) crop.record(PackedObservations.pack(batch));
    }

    /// @dev An honest relayer: every signed observation not yet on chain, station by station in seq order.
    function relayAll() external {
        for (uint256 i = 0; i < STATIONS; ++i) {
            address station = stations[i];
            uint256 len = streams[station].length;
            uint256 next = crop.stationState(station).lastSeq + 1;
            if (next > len) continue;
            ICropInsurance.SignedObservation[] memory batch = new ICropInsurance.SignedObservation[](len + 1 - next);
            for (uint256 seq = next; seq <= len; ++seq) {
                batch[seq - next] = _signed(station, uint64(seq));
            }
            crop.record(PackedObservations.pack(batch));
        }
    }

    /// @dev Every station's signed observations in seq order but for its last `(seed >> 8i) % 4`.
    function _relayAllBut(uint256 seed) internal {
        for (uint256 i = 0; i < STATIONS; ++i) {
            address station = stations[i];
            uint256 withheld = (seed >> (8 * i)) % 4;
            uint256 len = streams[station].length;
            uint256 next = crop.stationState(station).lastSeq + 1;
            if (len < withheld || next + withheld > len) continue;
            uint256 last = len - withheld;
            ICropInsurance.SignedObservation[] memory batch = new ICropInsurance.SignedObservation[](last + 1 - next);
            for (uint256 seq = next; seq <= last; ++seq) {
                batch[seq - next] = _signed(station, uint64(seq));
            }
            crop.record(PackedObservations.pack(batch));
        }
    }

    function warp(uint32 wait) external {
        vm.warp(block.timestamp + bound(wait, 0, 1 days));
    }

    function toggleFlaky(bool broken) external {
        flaky.setBroken(broken);
    }

    // ---------------------------------------------------------------- settlement

    /// @dev `wait`: first move time to the moment the season can be finalized (if it lies ahead); on the way, if
    /// the end is still ahead, the stations observe 20 h and 1 h before it and once after it, and the relayer
    /// relays a fuzzed pick, then each station's stream but for its last 0, 1, 2 or 3 observations.
    function finalize(uint256 seasonSeed, bool wait, uint256 relaySeed) external {
        if (seasons.length == 0) return;
        uint256 seasonId = seasons[seasonSeed % seasons.length];
        ICropInsurance.Season memory before = crop.seasonOf(seasonId);
        uint256 finalizableAt = uint256(before.terms.end) + before.terms.finalizeDelay;
        if (wait && block.timestamp + 20 hours < before.terms.end) {
            vm.warp(before.terms.end - 20 hours);
            _signAll(relaySeed, int256(relaySeed % 4_000));
            vm.warp(before.terms.end - 1 hours);
            _signAll(relaySeed >> 16, int256((relaySeed >> 32) % 4_000));
            vm.warp(uint256(before.terms.end) + 1);
            _signAll(relaySeed >> 48, int256((relaySeed >> 64) % 4_000));
            for (uint256 j = 0; j < 4; ++j) {
                this.relay(uint256(keccak256(abi.encode(relaySeed, j))), 8);
            }
            _relayAllBut(relaySeed >> 80);
        }
        if (wait && block.timestamp < finalizableAt) vm.warp(finalizableAt);
        vm.recordLogs();
        try crop.finalize(seasonId) {
            ICropInsurance.Season memory s = crop.seasonOf(seasonId);
            ghostLocked[s.poolId] -= ghostSeasonCover[seasonId];
            if (s.triggered) {
                ++triggeredSeasons;
                ghostTriggeredCover[s.poolId] += ghostSeasonCover[seasonId];
                ghostDue[crop.poolOf(s.poolId).token] += ghostSeasonCover[seasonId];
            } else {
                ++quietSeasons;
            }
            _checkVerdicts(s, vm.getRecordedLogs());
        } catch {
            vm.getRecordedLogs();
        }
    }

    /// @dev Each station's logged vote against the vote of its full honest stream.
    function _checkVerdicts(ICropInsurance.Season memory s, Vm.Log[] memory logs) internal {
        uint256 honestTriggers = 0;
        bool allComplete = true;
        for (uint256 i = 0; i < logs.length; ++i) {
            if (logs[i].emitter != address(crop) || logs[i].topics[0] != STATION_VERDICT) continue;
            address station = address(uint160(uint256(logs[i].topics[2])));
            (ICropInsurance.Verdict verdict, int256 measured) =
                abi.decode(logs[i].data, (ICropInsurance.Verdict, int256));
            (ICropInsurance.Verdict honest, int256 honestMeasured) = _honestVerdict(s.terms, station);
            if (honest == ICropInsurance.Verdict.Trigger) ++honestTriggers;
            bool same = verdict == honest && measured == honestMeasured;
            if (!same && verdict != ICropInsurance.Verdict.Abstain) ++verdictsNotHonest;
            if (_completeOnChain(s.terms.end, station)) {
                if (!same) ++completeStationsNotHonest;
                if (honest != ICropInsurance.Verdict.Abstain) ++completeStationVotes;
            } else {
                allComplete = false;
                if (!same) ++abstainedForWithheld;
            }
        }
        if (allComplete && s.triggered != (honestTriggers >= s.terms.k)) ++completeSeasonsNotHonest;
    }

    /// @dev Every observation of the station up to its first one dated after `end` is on chain.
    function _completeOnChain(uint64 end, address station) internal view returns (bool) {
        Observation[] storage stream = streams[station];
        uint256 recorded = crop.stationState(station).lastSeq;
        for (uint256 i = 0; i < stream.length; ++i) {
            if (stream[i].timestamp > end) return recorded >= i + 1;
        }
        return recorded == stream.length;
    }

    /// @dev The contract's rule applied to the station's whole signed stream (the ghost).
    function _honestVerdict(ICropInsurance.SeasonTerms memory t, address station)
        internal
        view
        returns (ICropInsurance.Verdict, int256)
    {
        Observation[] storage stream = streams[station];
        bool found;
        bool after_;
        Observation memory first;
        Observation memory last;
        uint256 hotDays;
        uint256 lastHotDay = type(uint256).max;
        for (uint256 i = 0; i < stream.length; ++i) {
            Observation memory o = stream[i];
            if (o.timestamp > t.end) {
                after_ = true;
                break;
            }
            if (o.timestamp < t.start) continue;
            if (!found) first = o;
            found = true;
            last = o;
            if (o.maxTemperature >= t.threshold && o.timestamp / 1 days != lastHotDay) {
                ++hotDays;
                lastHotDay = o.timestamp / 1 days;
            }
        }
        if (
            !found || !after_ || first.timestamp > uint256(t.start) + t.coverageSlack
                || uint256(last.timestamp) + t.coverageSlack < t.end
        ) return (ICropInsurance.Verdict.Abstain, 0);
        if (t.index == ICropInsurance.Index.RainfallBelow) {
            int256 rain = int256(uint256(last.rainfall - first.rainfall));
            return (rain < t.threshold ? ICropInsurance.Verdict.Trigger : ICropInsurance.Verdict.NoTrigger, rain);
        }
        return
            (
                hotDays >= t.triggerDays ? ICropInsurance.Verdict.Trigger : ICropInsurance.Verdict.NoTrigger,
                int256(hotDays)
            );
    }

    function payOut(uint256 seasonSeed, uint256 maxPolicies) external {
        if (seasons.length == 0) return;
        uint256 seasonId = seasons[seasonSeed % seasons.length];
        vm.recordLogs();
        try crop.payOut(seasonId, bound(maxPolicies, 0, 5)) {} catch {}
        Vm.Log[] memory logs = vm.getRecordedLogs();
        address token = crop.poolOf(crop.seasonOf(seasonId).poolId).token;
        for (uint256 i = 0; i < logs.length; ++i) {
            if (logs[i].emitter != address(crop) || logs[i].topics[0] != PAYOUT_SENT) continue;
            uint256 policyId = uint256(logs[i].topics[1]);
            ICropInsurance.Cover memory c = crop.coverOf(policyId);
            if (++payoutEvents[policyId] > 1) ++doublePayouts;
            uint256 amount = abi.decode(logs[i].data, (uint256));
            if (amount != c.cover || c.status != ICropInsurance.CoverStatus.Paid || c.seasonId != seasonId) {
                ++wrongPayouts;
            }
            ghostDue[token] -= amount;
            ghostPaidOut[token] += amount;
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
        bytes4[] memory selectors = new bytes4[](15);
        selectors[0] = CropHandler.deposit.selector;
        selectors[1] = CropHandler.withdrawPool.selector;
        selectors[2] = CropHandler.createSeason.selector;
        selectors[3] = CropHandler.buyCover.selector;
        selectors[4] = CropHandler.withdrawCredit.selector;
        selectors[5] = CropHandler.sign.selector;
        selectors[6] = CropHandler.signAll.selector;
        selectors[7] = CropHandler.relay.selector;
        selectors[8] = CropHandler.relay.selector; // relaying is the bulk of the traffic
        selectors[9] = CropHandler.relayAll.selector;
        selectors[10] = CropHandler.warp.selector;
        selectors[11] = CropHandler.toggleFlaky.selector;
        selectors[12] = CropHandler.finalize.selector;
        selectors[13] = CropHandler.payOut.selector;
        selectors[14] = CropHandler.payOut.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    function _held(address token) internal view returns (uint256) {
        return token == address(good) ? good.balanceOf(address(crop)) : flaky.balanceOf(address(crop));
    }

    /// @dev Solvency, per token (one pool each): the balance is exactly the pool's assets + payouts due + pull
    /// credits; each pool can pay all the cover it sold (locked ≤ assets), locked = cover of unfinalized seasons.
    function invariant_Solvency() public view {
        for (uint256 t = 0; t < 2; ++t) {
            uint256 poolId = handler.pools(t);
            ICropInsurance.Pool memory p = crop.poolOf(poolId);
            address token = p.token;
            uint256 owed = p.assets + crop.payoutsDue(token) + crop.credited(token);
            assertGe(_held(token), owed, "balance covers assets + payouts due + credits");
            assertEq(_held(token), owed, "nothing unaccounted for");
            assertEq(crop.payoutsDue(token), handler.ghostDue(token), "due = triggered cover not yet paid");
            assertLe(p.locked, p.assets, "locked <= assets");
            assertEq(p.locked, handler.ghostLocked(poolId), "locked = cover of unfinalized seasons");
            assertEq(
                p.assets,
                handler.ghostDeposited(poolId) + handler.ghostPremiums(poolId) - handler.ghostOwnerWithdrawn(poolId)
                    - handler.ghostTriggeredCover(poolId),
                "assets = deposits + premiums - withdrawals - cover of triggered seasons"
            );
        }
    }

    /// @dev Each payout equals its cover; each policy is paid at most once; beneficiaries received (pushed or
    /// credited) exactly the sum of paid covers.
    function invariant_PayoutsAreExactlyTheCoverOnce() public view {
        assertEq(handler.doublePayouts(), 0, "each policy paid once");
        assertEq(handler.wrongPayouts(), 0, "payout = cover, status matches");
        uint256 received;
        uint256 n = handler.beneficiariesLength();
        for (uint256 i = 0; i < n; ++i) {
            address b = handler.beneficiaries(i);
            received += good.balanceOf(b) + flaky.balanceOf(b);
            received += crop.withdrawable(address(good), b) + crop.withdrawable(address(flaky), b);
        }
        assertEq(received, handler.ghostPaidOut(address(good)) + handler.ghostPaidOut(address(flaky)));
        uint256 paidCover;
        uint256 m = handler.policiesLength();
        for (uint256 i = 0; i < m; ++i) {
            ICropInsurance.Cover memory c = crop.coverOf(handler.policies(i));
            if (c.status == ICropInsurance.CoverStatus.Paid) paidCover += c.cover;
        }
        assertEq(received, paidCover, "paid = sum of the covers of paid policies, never more");
    }

    /// @dev Relayers choose nothing: a finalized station vote is the vote of the station's full honest stream, or
    /// an abstention when part of the stream was still withheld; with every stream complete on chain the season's
    /// outcome is the honest one.
    function invariant_VerdictsAreTheHonestOnes() public view {
        assertEq(handler.verdictsNotHonest(), 0, "a vote differs from the honest stream's");
        assertEq(handler.completeStationsNotHonest(), 0, "a complete station's vote differs");
        assertEq(handler.completeSeasonsNotHonest(), 0, "a complete season's outcome differs");
    }

    /// @dev The handler reaches seasons that trigger and that do not, out-of-order relays, failed pushes and
    /// credit withdrawals.
    function test_HandlerReachesEveryOutcome() public {
        handler.createSeason(0, 3, 2, false, 0); // rain season on stations 0..2, pool in `good`
        handler.createSeason(1, 3, 2, false, 0); // same stations, pool in `flaky`
        handler.buyCover(0, 10_000, 0);
        handler.buyCover(1, 20_000, 1);
        handler.warp(13 hours); // 1 h after the start
        handler.signAll(0, 2_000, 0);
        handler.warp(1 days);
        handler.warp(12 hours); // 11 h before the end: within the 1-day slack
        handler.signAll(1, 2_000, 0); // under 30 mm each: drought
        handler.warp(12 hours); // after the end
        handler.signAll(2, 2_000, 0);
        for (uint256 seed = 0; seed < 12; ++seed) {
            handler.relay(seed, 8); // out of order: gaps refused, replays refused, the rest in seq order
        }
        handler.relayAll();
        assertGt(handler.outOfOrderRelays(), 0);
        handler.finalize(0, true, 1);
        handler.toggleFlaky(true);
        handler.finalize(1, false, 1);
        assertEq(handler.triggeredSeasons(), 2);
        assertGe(handler.completeStationVotes(), 6);
        handler.payOut(0, 5);
        handler.payOut(1, 5);
        assertGt(crop.withdrawable(address(flaky), handler.beneficiaries(1)), 0, "failed push credited");
        handler.toggleFlaky(false);
        handler.withdrawCredit(1, true);
        assertEq(flaky.balanceOf(handler.beneficiaries(1)), 20_000);
        assertEq(good.balanceOf(handler.beneficiaries(0)), 10_000);

        handler.createSeason(0, 3, 2, false, 0);
        handler.buyCover(2, 5_000, 2);
        handler.warp(13 hours);
        handler.signAll(0, 2_000, 0);
        handler.warp(1 days);
        handler.warp(12 hours);
        for (uint256 r = 0; r < 3; ++r) {
            handler.signAll(type(uint64).max, 2_000, 0); // up to 40 mm each time: no drought
        }
        handler.warp(12 hours);
        handler.signAll(0, 2_000, 0);
        handler.relay(99, 1); // mostly withheld: those stations abstain
        handler.warp(1 hours);
        handler.finalize(2, false, 1);
        assertEq(handler.quietSeasons(), 1);
        assertGt(handler.abstainedForWithheld(), 0);
        assertEq(good.balanceOf(handler.beneficiaries(2)), 0);
        invariant_Solvency();
        invariant_PayoutsAreExactlyTheCoverOnce();
        invariant_VerdictsAreTheHonestOnes();
    }
}
