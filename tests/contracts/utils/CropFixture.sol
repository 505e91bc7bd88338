// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {CropInsurance} from "../../../contracts/CropInsurance.sol";
import {ICropInsurance} from "../../../contracts/interfaces/ICropInsurance.sol";
import {IDeviceRegistry} from "../../../contracts/interfaces/IDeviceRegistry.sol";
import {Fixture} from "./Fixture.sol";
import {PackedObservations} from "./PackedObservations.sol";

/// @dev Adds CropInsurance, a funded pool, registered weather stations and observation signing to {Fixture}.
abstract contract CropFixture is Fixture {
    CropInsurance internal crop;

    address internal insurer = makeAddr("insurer");
    address internal farmer = makeAddr("farmer");
    address internal farmer2 = makeAddr("farmer2");

    uint256[] internal stationKeys;
    address[] internal stations;
    mapping(address station => uint64) internal nextSeq;

    /// @dev Season window used by most tests: a 30-day season starting 10 days after setUp.
    uint64 internal seasonStart;
    uint64 internal seasonEnd;
    uint64 internal constant SEASON_LENGTH = 30 days;
    uint32 internal constant SLACK = 1 days;
    uint32 internal constant FINALIZE_DELAY = 2 days;
    uint16 internal constant PREMIUM_BPS = 500; // 5 %
    int64 internal constant RAIN_THRESHOLD = 5_000; // 50.00 mm
    bytes32 internal constant REGION = keccak256("KE-Nakuru-0042");

    function setUp() public virtual override {
        super.setUp();
        crop = new CropInsurance(registry);
        seasonStart = uint64(block.timestamp + 10 days);
        seasonEnd = seasonStart + SEASON_LENGTH;
        for (uint256 i = 0; i < 7; ++i) {
            uint256 key = deviceKey(500 + i);
            stationKeys.push(key);
            stations.push(registerDevice(key, IDeviceRegistry.DeviceKind.WeatherStation, owner));
        }
        allowInsurer(insurer);
    }

    /// @dev The stations' owner allows `who` to name every station in its seasons.
    function allowInsurer(address who) internal {
        vm.startPrank(owner);
        for (uint256 i = 0; i < stations.length; ++i) {
            crop.allowInsurer(stations[i], who, true);
        }
        vm.stopPrank();
    }

    // ---------------------------------------------------------------- pools and seasons

    function newPool(uint256 amount) internal returns (uint256 poolId) {
        vm.prank(insurer);
        poolId = crop.createPool(address(token));
        if (amount != 0) fundPool(poolId, amount);
    }

    function fundPool(uint256 poolId, uint256 amount) internal {
        token.mint(insurer, amount);
        vm.startPrank(insurer);
        token.approve(address(crop), amount);
        crop.depositToPool(poolId, amount);
        vm.stopPrank();
    }

    function stationSet(uint256 n) internal view returns (address[] memory set) {
        set = new address[](n);
        for (uint256 i = 0; i < n; ++i) {
            set[i] = stations[i];
        }
    }

    function rainTerms(uint256 n, uint8 k) internal view returns (ICropInsurance.SeasonTerms memory t) {
        t = ICropInsurance.SeasonTerms({
            start: seasonStart,
            end: seasonEnd,
            saleEnd: seasonStart,
            coverageSlack: SLACK,
            finalizeDelay: FINALIZE_DELAY,
            index: ICropInsurance.Index.RainfallBelow,
            threshold: RAIN_THRESHOLD,
            triggerDays: 0,
            premiumBps: PREMIUM_BPS,
            k: k,
            region: REGION,
            stations: stationSet(n)
        });
    }

    function heatTerms(uint256 n, uint8 k, int64 temperature, uint16 days_)
        internal
        view
        returns (ICropInsurance.SeasonTerms memory t)
    {
        t = rainTerms(n, k);
        t.index = ICropInsurance.Index.HotDaysAbove;
        t.threshold = temperature;
        t.triggerDays = days_;
    }

    function newSeason(uint256 poolId, ICropInsurance.SeasonTerms memory t) internal returns (uint256 seasonId) {
        vm.prank(insurer);
        seasonId = crop.createSeason(poolId, t);
    }

    function buy(address who, uint256 seasonId, uint256 cover, address beneficiary)
        internal
        returns (uint256 policyId)
    {
        uint256 premium = (cover * crop.seasonOf(seasonId).terms.premiumBps + 9_999) / 10_000;
        token.mint(who, premium);
        vm.startPrank(who);
        token.approve(address(crop), premium);
        policyId = crop.buyCover(seasonId, cover, beneficiary);
        vm.stopPrank();
    }

    // ---------------------------------------------------------------- observations

    function signObs(uint256 key, address station, uint64 seq, uint64 timestamp, uint64 rainfall, int32 maxTemp)
        internal
        view
        returns (ICropInsurance.SignedObservation memory o)
    {
        bytes32 digest = crop.hashObservation(station, seq, timestamp, rainfall, maxTemp);
        (bytes32 r, bytes32 vs) = vm.signCompact(key, digest);
        o = ICropInsurance.SignedObservation(station, seq, timestamp, rainfall, maxTemp, r, vs);
    }

    /// @dev Station `i` signs its next observation (seq auto-incremented).
    function obs(uint256 i, uint64 timestamp, uint64 rainfall, int32 maxTemp)
        internal
        returns (ICropInsurance.SignedObservation memory)
    {
        address station = stations[i];
        return signObs(stationKeys[i], station, ++nextSeq[station], timestamp, rainfall, maxTemp);
    }

    function one(ICropInsurance.SignedObservation memory o)
        internal
        pure
        returns (ICropInsurance.SignedObservation[] memory batch)
    {
        batch = new ICropInsurance.SignedObservation[](1);
        batch[0] = o;
    }

    /// @dev Record one observation at `timestamp` (warping there if it lies ahead) and require it accepted.
    function recordAt(uint256 i, uint64 timestamp, uint64 rainfall, int32 maxTemp) internal {
        if (timestamp > block.timestamp) vm.warp(timestamp);
        assertEq(
            crop.record(PackedObservations.pack(one(obs(i, timestamp, rainfall, maxTemp)))), 1, "observation recorded"
        );
    }

    /// @dev Stations 0..n-1 report once more, one second after the end, with their last rain register: a station
    /// votes only once the contract holds an observation of it dated after the end.
    function reportAfterEnd(uint256 n) internal {
        uint64 ts = seasonEnd + 1;
        if (ts > block.timestamp) vm.warp(ts);
        for (uint256 i = 0; i < n; ++i) {
            uint64 rain = crop.stationState(stations[i]).lastRainfall;
            assertEq(
                crop.record(PackedObservations.pack(one(obs(i, ts, rain, 0)))), 1, "after-end observation recorded"
            );
        }
    }

    /// @dev Stations 0..n-1 observe the whole season: `rain[i]` fell at station i between start and end; each
    /// reports again after the end.
    function coverSeason(uint256[] memory rain) internal {
        ICropInsurance.SignedObservation[] memory batch = new ICropInsurance.SignedObservation[](rain.length);
        vm.warp(seasonStart);
        for (uint256 i = 0; i < rain.length; ++i) {
            batch[i] = obs(i, seasonStart, 1_000, 2_000);
        }
        assertEq(crop.record(PackedObservations.pack(batch)), rain.length);
        vm.warp(seasonEnd);
        for (uint256 i = 0; i < rain.length; ++i) {
            batch[i] = obs(i, seasonEnd, uint64(1_000 + rain[i]), 2_000);
        }
        assertEq(crop.record(PackedObservations.pack(batch)), rain.length);
        reportAfterEnd(rain.length);
    }

    function rains(uint256 n, uint256 each) internal pure returns (uint256[] memory r) {
        r = new uint256[](n);
        for (uint256 i = 0; i < n; ++i) {
            r[i] = each;
        }
    }

    function warpToFinalize() internal {
        vm.warp(seasonEnd + FINALIZE_DELAY);
    }
}
