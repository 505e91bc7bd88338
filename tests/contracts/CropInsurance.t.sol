// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {console} from "forge-std/console.sol";

import {CropInsurance} from "../../contracts/CropInsurance.sol";
import {ICommonErrors} from "../../contracts/interfaces/ICommonErrors.sol";
import {ICropInsurance} from "../../contracts/interfaces/ICropInsurance.sol";
import {IDeviceEvents} from "../../contracts/interfaces/IDeviceEvents.sol";
import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {IPullPayments} from "../../contracts/interfaces/IPullPayments.sol";
import {CropFixture} from "./utils/CropFixture.sol";
import {PackedObservations} from "./utils/PackedObservations.sol";
import {FalseReturningToken, FeeOnTransferToken, ReentrantToken, RevertingToken} from "./utils/Hostile.sol";

contract CropInsuranceTest is CropFixture {
    uint256 internal pool;
    uint256 internal constant POOL_FUNDS = 100_000;
    uint256 internal constant COVER = 10_000;

    function setUp() public override {
        super.setUp();
        pool = newPool(POOL_FUNDS);
    }

    function _rejected(ICropInsurance.SignedObservation memory o, IDeviceEvents.RejectReason reason) internal {
        ICropInsurance.StationState memory before = crop.stationState(o.station);
        vm.expectEmit(address(crop));
        emit ICropInsurance.ObservationRejected(o.station, o.seq, reason);
        vm.prank(relayer);
        assertEq(crop.record(PackedObservations.pack(one(o))), 0, "nothing recorded");
        assertEq(keccak256(abi.encode(before)), keccak256(abi.encode(crop.stationState(o.station))), "state unchanged");
        // The station's next observation takes the seq this one did not use (gapless numbering).
        if (reason != IDeviceEvents.RejectReason.Replayed && o.seq == nextSeq[o.station]) --nextSeq[o.station];
    }

    function _finalize(uint256 seasonId) internal {
        warpToFinalize();
        vm.prank(relayer);
        crop.finalize(seasonId);
    }

    // ---------------------------------------------------------------- pools

    function test_CreatePool_OwnerIsCaller() public {
        vm.expectEmit(address(crop));
        emit ICropInsurance.PoolCreated(pool + 1, farmer, address(token));
        vm.prank(farmer);
        uint256 id = crop.createPool(address(token));
        ICropInsurance.Pool memory p = crop.poolOf(id);
        assertEq(p.owner, farmer);
        assertEq(p.token, address(token));
        assertEq(p.assets, 0);
        assertEq(p.locked, 0);
    }

    function test_RevertWhen_CreatePool_EtherOrZeroToken() public {
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.ZeroAddress.selector));
        crop.createPool(address(0));
    }

    function test_Deposit_MovesTokensIntoThePool() public {
        token.mint(insurer, 500);
        vm.startPrank(insurer);
        token.approve(address(crop), 500);
        vm.expectEmit(address(crop));
        emit ICropInsurance.PoolDeposited(pool, 500);
        crop.depositToPool(pool, 500);
        vm.stopPrank();
        assertEq(crop.poolOf(pool).assets, POOL_FUNDS + 500);
        assertEq(token.balanceOf(address(crop)), POOL_FUNDS + 500);
        assertEq(token.balanceOf(insurer), 0);
    }

    function test_RevertWhen_Deposit_StrangerUnknownPoolOrZero() public {
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.NotPoolOwner.selector, pool, farmer));
        vm.prank(farmer);
        crop.depositToPool(pool, 1);
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.UnknownPool.selector, 99));
        vm.prank(insurer);
        crop.depositToPool(99, 1);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.ZeroAmount.selector));
        vm.prank(insurer);
        crop.depositToPool(pool, 0);
    }

    function test_Withdraw_OnlyTheFreePartOfThePool() public {
        uint256 seasonId = newSeason(pool, rainTerms(3, 2));
        buy(farmer, seasonId, 60_000, address(0)); // premium 3,000 into the pool, 60,000 locked
        ICropInsurance.Pool memory p = crop.poolOf(pool);
        assertEq(p.assets, POOL_FUNDS + 3_000);
        assertEq(p.locked, 60_000);
        uint256 free = p.assets - p.locked;

        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.InsufficientFreeAssets.selector, pool, free, free + 1));
        vm.prank(insurer);
        crop.withdrawFromPool(pool, free + 1);

        vm.expectEmit(address(crop));
        emit ICropInsurance.PoolWithdrawn(pool, free);
        vm.prank(insurer);
        crop.withdrawFromPool(pool, free);
        assertEq(token.balanceOf(insurer), free);
        assertEq(crop.poolOf(pool).assets, 60_000, "exactly the locked cover stays");
    }

    function test_RevertWhen_Withdraw_StrangerOrZero() public {
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.NotPoolOwner.selector, pool, farmer));
        vm.prank(farmer);
        crop.withdrawFromPool(pool, 1);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.ZeroAmount.selector));
        vm.prank(insurer);
        crop.withdrawFromPool(pool, 0);
    }

    // ---------------------------------------------------------------- seasons

    function test_CreateSeason_StoresTermsAndTakesStationSlots() public {
        ICropInsurance.SeasonTerms memory t = rainTerms(5, 3);
        vm.expectEmit(address(crop));
        emit ICropInsurance.SeasonCreated(1, pool, t);
        uint256 seasonId = newSeason(pool, t);
        ICropInsurance.Season memory s = crop.seasonOf(seasonId);
        assertEq(keccak256(abi.encode(s.terms)), keccak256(abi.encode(t)), "terms stored as given");
        assertEq(s.poolId, pool);
        assertFalse(s.finalized);
        for (uint256 i = 0; i < 5; ++i) {
            uint256[] memory ids = crop.seasonsOfStation(stations[i]);
            assertEq(ids.length, 1);
            assertEq(ids[0], seasonId);
        }
        assertEq(crop.seasonsOfStation(stations[5]).length, 0, "stations outside the set are not bound");
    }

    function test_RevertWhen_CreateSeason_NotPoolOwner() public {
        ICropInsurance.SeasonTerms memory t = rainTerms(3, 2);
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.NotPoolOwner.selector, pool, farmer));
        vm.prank(farmer);
        crop.createSeason(pool, t);
    }

    function test_RevertWhen_CreateSeason_BadWindow() public {
        ICropInsurance.SeasonTerms memory t = rainTerms(3, 2);
        t.saleEnd = t.start + 1; // sales must close by the start
        _expectBadWindow(t);
        t = rainTerms(3, 2);
        t.end = t.start; // empty window
        _expectBadWindow(t);
        t = rainTerms(3, 2);
        t.start = 0;
        t.saleEnd = 0;
        _expectBadWindow(t);
        t = rainTerms(3, 2);
        t.end = t.start + crop.MAX_SEASON_LENGTH() + 1;
        _expectBadWindow(t);
        t = rainTerms(3, 2);
        t.start = uint64(block.timestamp) + crop.MAX_SEASON_LEAD() + 1;
        t.end = t.start + 1;
        _expectBadWindow(t);

        t = rainTerms(3, 2);
        t.finalizeDelay = crop.MAX_FINALIZE_DELAY() + 1;
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.FinalizeDelayTooLong.selector, t.finalizeDelay));
        newSeason(pool, t);
    }

    /// @dev A season opened with a start its stations already reported past would miss those observations, or not,
    /// depending on when a relayer brought them: refused.
    function test_RevertWhen_CreateSeason_StationReportedSinceStart() public {
        ICropInsurance.SeasonTerms memory t = rainTerms(3, 2);
        vm.warp(seasonStart);
        recordAt(1, seasonStart, 10, 0);
        vm.expectRevert(
            abi.encodeWithSelector(ICropInsurance.StationReportedSinceStart.selector, stations[1], seasonStart)
        );
        newSeason(pool, t);
        t.start = seasonStart + 1;
        t.saleEnd = t.start;
        newSeason(pool, t);
    }

    function _expectBadWindow(ICropInsurance.SeasonTerms memory t) internal {
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.InvalidWindow.selector, t.saleEnd, t.start, t.end));
        newSeason(pool, t);
    }

    /// @dev k of n with 3 ≤ n ≤ 7 and 2 ≤ k ≤ n − 1: one station alone never decides.
    function test_RevertWhen_CreateSeason_QuorumLetsOneStationDecide() public {
        _expectBadQuorum(rainTerms(2, 1)); // n too small
        _expectBadQuorum(rainTerms(3, 1)); // one station could trigger
        _expectBadQuorum(rainTerms(3, 3)); // one station could block
        _expectBadQuorum(rainTerms(7, 7));
        ICropInsurance.SeasonTerms memory t = rainTerms(7, 6);
        address[] memory eight = new address[](8);
        for (uint256 i = 0; i < 7; ++i) {
            eight[i] = stations[i];
        }
        eight[7] = registerDevice(deviceKey(600), IDeviceRegistry.DeviceKind.WeatherStation, owner);
        t.stations = eight;
        _expectBadQuorum(t);
        // the bounds themselves are fine
        newSeason(pool, rainTerms(3, 2));
        newSeason(pool, rainTerms(7, 6));
    }

    function _expectBadQuorum(ICropInsurance.SeasonTerms memory t) internal {
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.InvalidQuorum.selector, t.k, t.stations.length));
        newSeason(pool, t);
    }

    function test_RevertWhen_CreateSeason_BadPremiumOrIndex() public {
        ICropInsurance.SeasonTerms memory t = rainTerms(3, 2);
        t.premiumBps = 0;
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.InvalidPremium.selector, 0));
        newSeason(pool, t);
        t.premiumBps = 10_001;
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.InvalidPremium.selector, 10_001));
        newSeason(pool, t);

        t = rainTerms(3, 2);
        t.threshold = 0; // "less than no rain" never triggers
        vm.expectRevert(
            abi.encodeWithSelector(ICropInsurance.InvalidIndex.selector, ICropInsurance.Index.RainfallBelow, 0, 0)
        );
        newSeason(pool, t);
        t = heatTerms(3, 2, 3_500, 0); // zero hot days would always trigger
        vm.expectRevert(
            abi.encodeWithSelector(ICropInsurance.InvalidIndex.selector, ICropInsurance.Index.HotDaysAbove, 3_500, 0)
        );
        newSeason(pool, t);
    }

    function test_RevertWhen_CreateSeason_BadStations() public {
        ICropInsurance.SeasonTerms memory t = rainTerms(3, 2);
        t.stations[2] = t.stations[0];
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.DuplicateStation.selector, stations[0]));
        newSeason(pool, t);

        t = rainTerms(3, 2);
        address meter = registerDevice(deviceKey(601), IDeviceRegistry.DeviceKind.Meter, owner);
        t.stations[1] = meter;
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.InvalidStation.selector, meter));
        newSeason(pool, t);

        t = rainTerms(3, 2);
        t.stations[1] = makeAddr("unregistered");
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.InvalidStation.selector, t.stations[1]));
        newSeason(pool, t);

        vm.prank(owner);
        registry.revoke(stations[2]);
        t = rainTerms(3, 2);
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.InvalidStation.selector, stations[2]));
        newSeason(pool, t);
    }

    function test_RevertWhen_CreateSeason_StationServesMaxSeasons() public {
        uint256 max = crop.MAX_SEASONS_PER_STATION();
        uint256 first;
        for (uint256 i = 0; i < max; ++i) {
            uint256 id = newSeason(pool, rainTerms(3, 2));
            if (i == 0) first = id;
        }
        ICropInsurance.SeasonTerms memory t = rainTerms(3, 2);
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.StationBusy.selector, stations[0]));
        newSeason(pool, t);
        // finalizing a season frees its stations' slots
        _finalize(first);
        assertEq(crop.seasonsOfStation(stations[0]).length, max - 1);
        seasonStart = uint64(block.timestamp + 1 days);
        seasonEnd = seasonStart + SEASON_LENGTH;
        newSeason(pool, rainTerms(3, 2));
    }

    function test_AllowInsurer_OnlyTheStationOwnerDecidesWhoNamesTheStation() public {
        assertTrue(crop.insurerAllowed(stations[0], insurer));
        assertFalse(crop.insurerAllowed(stations[0], farmer));
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.NotStationOwner.selector, stations[0], farmer));
        vm.prank(farmer);
        crop.allowInsurer(stations[0], farmer, true);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.ZeroAddress.selector));
        vm.prank(owner);
        crop.allowInsurer(stations[0], address(0), true);

        // revoked for station 1: the insurer's next season naming it is refused, earlier ones keep it
        uint256 before = newSeason(pool, rainTerms(3, 2));
        vm.expectEmit(address(crop));
        emit ICropInsurance.InsurerAllowed(stations[1], insurer, false);
        vm.prank(owner);
        crop.allowInsurer(stations[1], insurer, false);
        assertFalse(crop.insurerAllowed(stations[1], insurer));
        ICropInsurance.SeasonTerms memory t = rainTerms(3, 2);
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.StationNotAllowed.selector, stations[1], insurer));
        newSeason(pool, t);
        assertEq(crop.seasonOf(before).terms.stations[1], stations[1]);
        assertEq(crop.seasonsOfStation(stations[1]).length, 1);

        // a pool owner the station's owner allowed names it
        vm.prank(farmer);
        uint256 farmerPool = crop.createPool(address(token));
        vm.expectEmit(address(crop));
        emit ICropInsurance.InsurerAllowed(stations[0], farmer, true);
        allowInsurer(farmer);
        vm.prank(farmer);
        crop.createSeason(farmerPool, rainTerms(3, 2));
    }

    /// @dev An allowed insurer names a station in seasons only to occupy its slots: before the sale ends, the
    /// station's owner releases it (and can stop allowing that insurer).
    function test_ReleaseStation_OwnerFreesTheSlotAndTheStationAbstains() public {
        uint256 max = crop.MAX_SEASONS_PER_STATION();
        allowInsurer(farmer);
        vm.prank(farmer);
        uint256 squatPool = crop.createPool(address(token));
        ICropInsurance.SeasonTerms memory t = rainTerms(3, 2);
        uint256 squatted;
        for (uint256 i = 0; i < max; ++i) {
            vm.prank(farmer);
            squatted = crop.createSeason(squatPool, t);
        }
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.StationBusy.selector, stations[0]));
        newSeason(pool, rainTerms(3, 2));

        vm.expectEmit(address(crop));
        emit ICropInsurance.StationReleased(squatted, stations[0]);
        vm.prank(owner);
        crop.releaseStation(squatted, stations[0]);
        assertEq(crop.seasonsOfStation(stations[0]).length, max - 1);
        // the insurer now needs stations 1 and 2 freed too, or other stations
        ICropInsurance.SeasonTerms memory mine = rainTerms(5, 3);
        mine.stations[1] = stations[3];
        mine.stations[2] = stations[4];
        mine.stations[3] = stations[5];
        mine.stations[4] = stations[6];
        newSeason(pool, mine);

        // the released station abstains in the squatted season even if it covered it
        coverSeason(rains(3, 0));
        assertEq(crop.stationSeason(squatted, stations[0]).firstTimestamp, 0, "no longer applied");
        (ICropInsurance.Verdict v,) = crop.verdictOf(squatted, stations[0]);
        assertEq(uint8(v), uint8(ICropInsurance.Verdict.Abstain));
        _finalize(squatted);
        ICropInsurance.Season memory s = crop.seasonOf(squatted);
        assertEq(s.abstentions, 1);
        assertEq(s.triggerVotes, 2);
        assertTrue(s.triggered, "k = 2 of the remaining two");
    }

    function test_RevertWhen_ReleaseStation_NotOwnerNotServingOrSaleEnded() public {
        uint256 seasonId = newSeason(pool, rainTerms(3, 2));
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.NotStationOwner.selector, stations[0], farmer));
        vm.prank(farmer);
        crop.releaseStation(seasonId, stations[0]);
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.StationNotInSeason.selector, seasonId, stations[5]));
        vm.prank(owner);
        crop.releaseStation(seasonId, stations[5]);
        vm.prank(owner);
        crop.releaseStation(seasonId, stations[0]);
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.StationNotInSeason.selector, seasonId, stations[0]));
        vm.prank(owner);
        crop.releaseStation(seasonId, stations[0]);
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.UnknownSeason.selector, 42));
        crop.releaseStation(42, stations[0]);
        // from the end of the sale on, buyers rely on the station set
        vm.warp(seasonStart - 1);
        vm.prank(owner);
        crop.releaseStation(seasonId, stations[2]);
        vm.warp(seasonStart);
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.ReleaseClosed.selector, seasonId, seasonStart));
        vm.prank(owner);
        crop.releaseStation(seasonId, stations[1]);
        _finalize(seasonId);
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.ReleaseClosed.selector, seasonId, seasonStart));
        vm.prank(owner);
        crop.releaseStation(seasonId, stations[1]);
    }

    // ---------------------------------------------------------------- cover

    function test_BuyCover_PullsCeilPremiumIntoPoolAndLocksCover() public {
        uint256 seasonId = newSeason(pool, rainTerms(3, 2));
        uint256 cover = 10_001; // 5 % = 500.05 → 501
        token.mint(farmer, 501);
        vm.startPrank(farmer);
        token.approve(address(crop), 501);
        vm.expectEmit(address(crop));
        emit ICropInsurance.CoverBought(1, seasonId, farmer, farmer2, cover, 501);
        uint256 policyId = crop.buyCover(seasonId, cover, farmer2);
        vm.stopPrank();

        assertEq(token.balanceOf(farmer), 0, "premium taken");
        ICropInsurance.Pool memory p = crop.poolOf(pool);
        assertEq(p.assets, POOL_FUNDS + 501, "premium belongs to the pool");
        assertEq(p.locked, cover);
        ICropInsurance.Cover memory c = crop.coverOf(policyId);
        assertEq(c.seasonId, seasonId);
        assertEq(c.buyer, farmer);
        assertEq(c.beneficiary, farmer2);
        assertEq(c.cover, cover);
        assertEq(c.premium, 501);
        assertEq(uint8(c.status), uint8(ICropInsurance.CoverStatus.Active));
        assertEq(crop.seasonOf(seasonId).coverSold, cover);
        assertEq(crop.policiesOf(seasonId).length, 1);
    }

    function test_BuyCover_ZeroBeneficiaryMeansBuyer() public {
        uint256 seasonId = newSeason(pool, rainTerms(3, 2));
        uint256 policyId = buy(farmer, seasonId, COVER, address(0));
        assertEq(crop.coverOf(policyId).beneficiary, farmer);
    }

    function testFuzz_BuyCover_PremiumIsRoundedUp(uint256 cover, uint16 bps) public {
        cover = bound(cover, 1, 1e30);
        bps = uint16(bound(bps, 1, 10_000));
        ICropInsurance.SeasonTerms memory t = rainTerms(3, 2);
        t.premiumBps = bps;
        uint256 seasonId = newSeason(pool, t);
        fundPool(pool, cover);
        uint256 policyId = buy(farmer, seasonId, cover, address(0));
        uint256 premium = crop.coverOf(policyId).premium;
        // independent: the smallest p with p × 10_000 ≥ cover × bps
        assertGe(premium * 10_000, cover * bps);
        assertLt((premium - 1) * 10_000, cover * bps);
        assertLe(premium, cover);
    }

    /// @dev The pool never sells more cover than it can pay: the premium of the purchase counts, nothing else.
    function test_RevertWhen_BuyCover_PoolFull_InsufficientCapacity() public {
        uint256 seasonId = newSeason(pool, rainTerms(3, 2));
        buy(farmer, seasonId, 90_000, address(0)); // premium 4,500: assets 104,500, locked 90,000
        uint256 available = POOL_FUNDS + 4_500 - 90_000;
        // 15,000 cover brings 750 premium: 15,250 available < 15,000? no: 14,500 + 750 = 15,250 ≥ 15,000 fits;
        // 16,000 brings 800: 14,500 + 800 = 15,300 < 16,000 does not.
        token.mint(farmer2, 800);
        vm.startPrank(farmer2);
        token.approve(address(crop), 800);
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.InsufficientCapacity.selector, available + 800));
        crop.buyCover(seasonId, 16_000, address(0));
        vm.stopPrank();
        assertEq(token.balanceOf(farmer2), 800, "no premium taken");
        buy(farmer2, seasonId, 15_000, address(0));
        ICropInsurance.Pool memory p = crop.poolOf(pool);
        assertEq(p.locked, 105_000);
        assertEq(p.assets, POOL_FUNDS + 4_500 + 750);
        assertLe(p.locked, p.assets);
        // and the owner cannot take the backing out
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.InsufficientFreeAssets.selector, pool, 250, 251));
        vm.prank(insurer);
        crop.withdrawFromPool(pool, 251);
    }

    function test_RevertWhen_BuyCover_AfterSaleEndZeroOrUnknown() public {
        uint256 seasonId = newSeason(pool, rainTerms(3, 2));
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.ZeroAmount.selector));
        crop.buyCover(seasonId, 0, address(0));
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.UnknownSeason.selector, 7));
        crop.buyCover(7, COVER, address(0));
        vm.warp(seasonStart); // saleEnd = start
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.SaleClosed.selector, seasonId, seasonStart));
        crop.buyCover(seasonId, COVER, address(0));
    }

    function test_RevertWhen_BuyCover_FeeOnTransferPremium() public {
        FeeOnTransferToken fee = new FeeOnTransferToken();
        vm.prank(insurer);
        uint256 feePool = crop.createPool(address(fee));
        fee.mint(insurer, 10_000);
        vm.startPrank(insurer);
        fee.approve(address(crop), 10_000);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.WrongValue.selector, 10_000, 9_900));
        crop.depositToPool(feePool, 10_000);
        vm.stopPrank();
        assertEq(crop.poolOf(feePool).assets, 0, "books never run ahead of the balance");
    }

    function test_RevertWhen_Deposit_FalseReturningToken() public {
        FalseReturningToken f = new FalseReturningToken();
        vm.prank(insurer);
        uint256 fPool = crop.createPool(address(f));
        f.mint(insurer, 1_000);
        f.setLying(true);
        vm.startPrank(insurer);
        f.approve(address(crop), 1_000);
        vm.expectRevert(abi.encodeWithSelector(SafeERC20.SafeERC20FailedOperation.selector, address(f)));
        crop.depositToPool(fPool, 1_000);
        vm.stopPrank();
    }

    // ---------------------------------------------------------------- observations

    function test_Record_MovesStationStateAndAppliesInsideTheWindowOnly() public {
        uint256 seasonId = newSeason(pool, rainTerms(3, 2));
        // before the season: state moves on, season untouched
        vm.expectEmit(address(crop));
        emit ICropInsurance.ObservationRecorded(stations[0], 1, uint64(block.timestamp), 700, 1_900);
        recordAt(0, uint64(block.timestamp), 700, 1_900);
        ICropInsurance.StationState memory st = crop.stationState(stations[0]);
        assertEq(st.lastSeq, 1);
        assertEq(st.lastRainfall, 700);
        assertEq(crop.stationSeason(seasonId, stations[0]).firstTimestamp, 0, "outside the window");

        recordAt(0, seasonStart, 900, 1_900);
        recordAt(0, seasonStart + 5 days, 1_400, 2_500);
        ICropInsurance.StationSeason memory ss = crop.stationSeason(seasonId, stations[0]);
        assertEq(ss.firstTimestamp, seasonStart);
        assertEq(ss.firstRainfall, 900, "rain before the start does not count");
        assertEq(ss.lastTimestamp, seasonStart + 5 days);
        assertEq(ss.lastRainfall, 1_400);

        recordAt(0, seasonEnd + 1, 9_000, 1_900); // after the end: not applied
        assertEq(crop.stationSeason(seasonId, stations[0]).lastRainfall, 1_400);
        assertEq(crop.stationState(stations[0]).lastRainfall, 9_000);
    }

    /// @dev In the steady state a season's last observation in the window lives only in the station's word: the
    /// figures must still be the ones of every observation applied in turn, through overlapping windows, the end
    /// of one of them, and a finalization while a station has not reported past the end.
    function test_Record_SeasonFiguresFollowTheStationOnTheQuietPath() public {
        uint256 a = newSeason(pool, rainTerms(3, 2));
        ICropInsurance.SeasonTerms memory tb = rainTerms(3, 2);
        tb.start = seasonStart + 10 days;
        tb.end = seasonEnd + 10 days;
        uint256 b = newSeason(pool, tb);

        recordAt(0, seasonStart, 100, 0);
        recordAt(1, seasonStart, 1_000, 0);
        recordAt(0, seasonStart + 1 days, 200, 0);
        recordAt(1, seasonStart + 1 days, 1_100, 0);
        _expectFigures(a, 0, seasonStart, 100, seasonStart + 1 days, 200);
        assertEq(crop.stationSeason(b, stations[0]).firstTimestamp, 0, "b not started");

        recordAt(0, tb.start, 300, 0);
        recordAt(0, seasonEnd, 400, 0);
        _expectFigures(a, 0, seasonStart, 100, seasonEnd, 400);
        _expectFigures(b, 0, tb.start, 300, seasonEnd, 400);

        recordAt(0, seasonEnd + 1, 500, 0); // past a's end: a keeps 400
        recordAt(0, seasonEnd + 2 days, 600, 0);
        _expectFigures(a, 0, seasonStart, 100, seasonEnd, 400);
        _expectFigures(b, 0, tb.start, 300, seasonEnd + 2 days, 600);

        _finalize(a);
        (ICropInsurance.Verdict v, int256 measured) = crop.verdictOf(a, stations[0]);
        assertEq(uint8(v), uint8(ICropInsurance.Verdict.Trigger));
        assertEq(measured, 300);
        // Station 1 never reported past a's end; after the finalization its later observations inside a's window
        // are not a's any more.
        _expectFigures(a, 1, seasonStart, 1_000, seasonStart + 1 days, 1_100);
        assertEq(crop.record(PackedObservations.pack(one(obs(1, seasonEnd, 5_000, 0)))), 1);
        _expectFigures(a, 1, seasonStart, 1_000, seasonStart + 1 days, 1_100);
        _expectFigures(b, 1, seasonEnd, 5_000, seasonEnd, 5_000);
    }

    function _expectFigures(
        uint256 seasonId,
        uint256 i,
        uint64 firstTs,
        uint64 firstRain,
        uint64 lastTs,
        uint64 lastRain
    ) internal view {
        ICropInsurance.StationSeason memory ss = crop.stationSeason(seasonId, stations[i]);
        assertEq(ss.firstTimestamp, firstTs, "first timestamp");
        assertEq(ss.firstRainfall, firstRain, "first rainfall");
        assertEq(ss.lastTimestamp, lastTs, "last timestamp");
        assertEq(ss.lastRainfall, lastRain, "last rainfall");
    }

    function test_RevertWhen_Record_MalformedBatch() public {
        bytes memory packed = PackedObservations.pack(one(obs(0, uint64(block.timestamp), 5, 0)));
        bytes memory cut = new bytes(packed.length - 1);
        for (uint256 i = 0; i < cut.length; ++i) {
            cut[i] = packed[i];
        }
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.MalformedBatch.selector, cut.length));
        crop.record(cut);
        assertEq(crop.record(""), 0, "an empty batch records nothing");
    }

    /// @dev The packed maxTemperature is two's complement: a frost below a negative threshold is no hot day, a
    /// reading above it is one, and the signature (over the signed int32) verifies.
    function test_Record_PackedNegativeTemperatures() public {
        uint256 seasonId = newSeason(pool, heatTerms(3, 2, -1_000, 1));
        recordAt(0, seasonStart, 10, -2_500);
        assertEq(crop.stationSeason(seasonId, stations[0]).hotDays, 0, "-25.00 is below -10.00");
        recordAt(0, seasonStart + 1 days, 10, -500);
        assertEq(crop.stationSeason(seasonId, stations[0]).hotDays, 1, "-5.00 is above -10.00");
    }

    function test_Record_OneObservationServesEveryOpenSeason() public {
        uint256 a = newSeason(pool, rainTerms(3, 2));
        uint256 b = newSeason(pool, heatTerms(4, 3, 3_000, 1));
        recordAt(2, seasonStart, 100, 3_100);
        assertEq(crop.stationSeason(a, stations[2]).firstRainfall, 100);
        assertEq(crop.stationSeason(b, stations[2]).firstRainfall, 100);
        assertEq(crop.stationSeason(b, stations[2]).hotDays, 1);
        assertEq(crop.stationSeason(a, stations[2]).hotDays, 0, "a rain season counts no hot days");
    }

    function test_Record_HotDayCountsOncePerUtcDay() public {
        uint256 seasonId = newSeason(pool, heatTerms(3, 2, 3_500, 2));
        uint64 day0 = (seasonStart / 1 days + 1) * 1 days; // a midnight inside the season
        recordAt(0, day0 + 1 hours, 0, 3_600);
        recordAt(0, day0 + 2 hours, 0, 3_900); // same day: not counted again
        recordAt(0, day0 + 23 hours, 0, 3_499); // below the threshold
        recordAt(0, day0 + 1 days, 0, 3_500); // next day, exactly the threshold counts
        recordAt(0, day0 + 3 days, 0, 1_000);
        ICropInsurance.StationSeason memory ss = crop.stationSeason(seasonId, stations[0]);
        assertEq(ss.hotDays, 2);
        assertEq(ss.lastHotDay, (day0 + 1 days) / 1 days + 1);
    }

    function test_Record_BatchSkipsBadItemsAndRecordsTheRest() public {
        ICropInsurance.SignedObservation[] memory batch = new ICropInsurance.SignedObservation[](4);
        uint64 ts = uint64(block.timestamp);
        batch[0] = obs(0, ts, 10, 0);
        batch[1] = batch[0]; // duplicate
        batch[2] = obs(1, ts + 1 hours, 10, 0); // in the future
        batch[3] = obs(2, ts, 10, 0);
        vm.expectEmit(address(crop));
        emit ICropInsurance.ObservationRecorded(stations[0], 1, ts, 10, 0);
        vm.expectEmit(address(crop));
        emit ICropInsurance.ObservationRejected(stations[0], 1, IDeviceEvents.RejectReason.Replayed);
        vm.expectEmit(address(crop));
        emit ICropInsurance.ObservationRejected(stations[1], 1, IDeviceEvents.RejectReason.TimestampInFuture);
        vm.expectEmit(address(crop));
        emit ICropInsurance.ObservationRecorded(stations[2], 1, ts, 10, 0);
        assertEq(crop.record(PackedObservations.pack(batch)), 2);
    }

    function test_Reject_Replayed() public {
        ICropInsurance.SignedObservation memory o = obs(0, uint64(block.timestamp), 10, 0);
        crop.record(PackedObservations.pack(one(o)));
        _rejected(o, IDeviceEvents.RejectReason.Replayed);
        _rejected(
            signObs(stationKeys[0], stations[0], 0, uint64(block.timestamp), 10, 0), IDeviceEvents.RejectReason.Replayed
        );
    }

    /// @dev Gapless numbering: a seq above last + 1 waits for the missing one; at or below the last is a replay
    /// (checked first, so racing relayers of the same batch see Replayed).
    function test_Reject_SequenceGapThenAcceptedInOrder() public {
        uint64 ts = uint64(block.timestamp);
        ICropInsurance.SignedObservation memory o1 = obs(0, ts, 10, 0);
        ICropInsurance.SignedObservation memory o2 = obs(0, ts, 20, 0);
        ICropInsurance.SignedObservation memory o3 = obs(0, ts, 30, 0);
        _rejected(o3, IDeviceEvents.RejectReason.SequenceGap);
        _rejected(o2, IDeviceEvents.RejectReason.SequenceGap);
        ICropInsurance.SignedObservation[] memory batch = new ICropInsurance.SignedObservation[](3);
        batch[0] = o1;
        batch[1] = o2;
        batch[2] = o3;
        assertEq(crop.record(PackedObservations.pack(batch)), 3, "the same observations, in order, are all taken");
        assertEq(crop.stationState(stations[0]).lastSeq, 3);
        _rejected(o2, IDeviceEvents.RejectReason.Replayed);
        ICropInsurance.SignedObservation memory o5 = signObs(stationKeys[0], stations[0], 5, ts, 50, 0);
        _rejected(o5, IDeviceEvents.RejectReason.SequenceGap);
    }

    function test_Reject_TimestampEdges() public {
        uint64 skew = crop.MAX_CLOCK_SKEW();
        _rejected(obs(0, uint64(block.timestamp) + skew + 1, 10, 0), IDeviceEvents.RejectReason.TimestampInFuture);
        recordAt(0, uint64(block.timestamp) + skew, 10, 0); // the edge is accepted
        vm.warp(block.timestamp + 1 hours);
        _rejected(obs(0, uint64(block.timestamp) - 1 hours - 1, 10, 0), IDeviceEvents.RejectReason.TimestampTooOld);
    }

    function test_Reject_RainfallRegisterRollback() public {
        recordAt(0, uint64(block.timestamp), 500, 0);
        _rejected(obs(0, uint64(block.timestamp), 499, 0), IDeviceEvents.RejectReason.CounterRollback);
        recordAt(0, uint64(block.timestamp), 500, 0); // equal is fine: no rain
    }

    function test_Reject_BadSignatures() public {
        ICropInsurance.SignedObservation memory o = obs(0, uint64(block.timestamp), 10, 0);
        o.r = bytes32(0);
        _rejected(o, IDeviceEvents.RejectReason.SignatureInvalid);
        o = obs(0, uint64(block.timestamp), 10, 0);
        o.vs = bytes32((uint256(o.vs) & (1 << 255)) | (SECP256K1_N / 2 + 1));
        _rejected(o, IDeviceEvents.RejectReason.SignatureMalleable);
        o = obs(0, uint64(block.timestamp), 10, 0);
        o.rainfall = 11; // tampered: recovers to some unrelated key
        _rejected(o, IDeviceEvents.RejectReason.UnknownKey);
    }

    function test_Reject_SignedByAnotherStationOrKind() public {
        // station 1's key signs an observation claiming to be station 0
        _rejected(
            signObs(stationKeys[1], stations[0], 1, uint64(block.timestamp), 10, 0),
            IDeviceEvents.RejectReason.WrongDevice
        );
        uint256 meterKey = deviceKey(700);
        address meter = registerDevice(meterKey, IDeviceRegistry.DeviceKind.Meter, owner);
        _rejected(
            signObs(meterKey, meter, 1, uint64(block.timestamp), 10, 0), IDeviceEvents.RejectReason.WrongDeviceKind
        );
    }

    function test_Reject_RotatedKeyRevokedStationAndOtherChain() public {
        ICropInsurance.SignedObservation memory o = obs(0, uint64(vm.getBlockTimestamp()), 10, 0);
        vm.chainId(block.chainid + 1);
        _rejected(o, IDeviceEvents.RejectReason.UnknownKey);
        vm.chainId(block.chainid - 1);

        uint256 newKey = deviceKey(800);
        rotate(stations[0], newKey, owner);
        // Signed after the retirement: refused (signed before, it would count for the grace).
        vm.warp(vm.getBlockTimestamp() + 1);
        _rejected(obs(0, uint64(vm.getBlockTimestamp()), 10, 0), IDeviceEvents.RejectReason.KeyRotated);
        assertEq(
            crop.record(PackedObservations.pack(one(signObs(newKey, stations[0], 1, uint64(vm.getBlockTimestamp()), 10, 0)))),
            1,
            "new key"
        );

        vm.prank(owner);
        registry.revoke(stations[1]);
        vm.warp(vm.getBlockTimestamp() + 1);
        _rejected(obs(1, uint64(vm.getBlockTimestamp()), 10, 0), IDeviceEvents.RejectReason.DeviceRevoked);
    }

    function test_HashObservation_IsTheEip712DigestOfTheType() public view {
        assertEq(
            crop.OBSERVATION_TYPEHASH(),
            keccak256(
                "WeatherObservation(address station,uint64 seq,uint64 timestamp,uint64 rainfall,int32 maxTemperature)"
            )
        );
        bytes32 sh = keccak256(
            abi.encode(crop.OBSERVATION_TYPEHASH(), stations[0], uint64(3), uint64(4), uint64(5), int32(-1234))
        );
        assertEq(
            crop.hashObservation(stations[0], 3, 4, 5, -1234),
            digestUnder("iotsettle", "1", block.chainid, address(crop), sh)
        );
    }

    // ---------------------------------------------------------------- finalization

    function test_RevertWhen_Finalize_TooEarlyTwiceOrUnknown() public {
        uint256 seasonId = newSeason(pool, rainTerms(3, 2));
        vm.warp(seasonEnd + FINALIZE_DELAY - 1);
        vm.expectRevert(
            abi.encodeWithSelector(
                ICommonErrors.TooEarly.selector, seasonId, seasonEnd + FINALIZE_DELAY, seasonEnd + FINALIZE_DELAY - 1
            )
        );
        crop.finalize(seasonId);
        vm.warp(seasonEnd + FINALIZE_DELAY);
        crop.finalize(seasonId);
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.AlreadyFinalized.selector, seasonId));
        crop.finalize(seasonId);
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.UnknownSeason.selector, 9));
        crop.finalize(9);
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.UnknownSeason.selector, 9));
        crop.payOut(9, 1);
    }

    function test_RevertWhen_PayOut_BeforeFinalize() public {
        uint256 seasonId = newSeason(pool, rainTerms(3, 2));
        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.NotFinalized.selector, seasonId));
        crop.payOut(seasonId, 10);
    }

    /// @dev Drought: every station measured 12 mm < 50 mm. Finalize decides and books the pool; payOut then gives
    /// each policy exactly its cover, with no claim.
    function test_Finalize_DroughtPaysEveryPolicyItsCover() public {
        uint256 seasonId = newSeason(pool, rainTerms(5, 3));
        uint256 p1 = buy(farmer, seasonId, COVER, address(0));
        uint256 p2 = buy(farmer, seasonId, 2 * COVER, farmer2);
        coverSeason(rains(5, 1_200));

        warpToFinalize();
        for (uint256 i = 0; i < 5; ++i) {
            vm.expectEmit(address(crop));
            emit ICropInsurance.StationVerdict(seasonId, stations[i], ICropInsurance.Verdict.Trigger, 1_200);
        }
        vm.expectEmit(address(crop));
        emit ICropInsurance.SeasonFinalized(seasonId, true, 5, 0, 0);
        vm.prank(relayer);
        crop.finalize(seasonId);
        assertEq(token.balanceOf(farmer), 0, "finalize pays nobody");
        assertEq(uint8(crop.coverOf(p1).status), uint8(ICropInsurance.CoverStatus.Due));
        assertEq(crop.poolOf(pool).locked, 0);
        assertEq(crop.payoutsDue(address(token)), 3 * COVER);

        vm.expectEmit(address(crop));
        emit ICropInsurance.PayoutSent(p1, farmer, COVER);
        vm.expectEmit(address(crop));
        emit ICropInsurance.PayoutSent(p2, farmer2, 2 * COVER);
        vm.prank(relayer);
        assertEq(crop.payOut(seasonId, 10), 2);

        assertEq(token.balanceOf(farmer), COVER);
        assertEq(token.balanceOf(farmer2), 2 * COVER);
        assertEq(uint8(crop.coverOf(p1).status), uint8(ICropInsurance.CoverStatus.Paid));
        ICropInsurance.Pool memory p = crop.poolOf(pool);
        uint256 premiums = 500 + 1_000;
        assertEq(p.assets, POOL_FUNDS + premiums - 3 * COVER);
        assertEq(p.locked, 0);
        assertEq(crop.payoutsDue(address(token)), 0);
        assertEq(token.balanceOf(address(crop)), p.assets);
        ICropInsurance.Season memory s = crop.seasonOf(seasonId);
        assertTrue(s.finalized && s.triggered);
        assertEq(s.paidUpTo, 2);
        assertEq(crop.payOut(seasonId, 10), 0, "nothing left: never paid twice");
        assertEq(token.balanceOf(farmer), COVER);
    }

    function test_Finalize_GoodRainExpiresCoverAndFreesThePool() public {
        uint256 seasonId = newSeason(pool, rainTerms(3, 2));
        uint256 p1 = buy(farmer, seasonId, COVER, address(0));
        coverSeason(rains(3, 8_000));
        warpToFinalize();
        vm.expectEmit(address(crop));
        emit ICropInsurance.SeasonFinalized(seasonId, false, 0, 3, 0);
        crop.finalize(seasonId);
        assertEq(crop.payOut(seasonId, 10), 0, "nothing to pay");
        assertEq(crop.seasonOf(seasonId).paidUpTo, 1, "every policy settled by the verdict");
        assertEq(token.balanceOf(farmer), 0);
        assertEq(uint8(crop.coverOf(p1).status), uint8(ICropInsurance.CoverStatus.Expired));
        ICropInsurance.Pool memory p = crop.poolOf(pool);
        assertEq(p.locked, 0);
        assertEq(p.assets, POOL_FUNDS + 500, "the insurer keeps the premium");
        vm.prank(insurer);
        crop.withdrawFromPool(pool, p.assets);
        assertEq(token.balanceOf(insurer), POOL_FUNDS + 500);
    }

    /// @dev Rain exactly at the threshold is not "below".
    function test_Finalize_RainAtThresholdDoesNotTrigger() public {
        uint256 seasonId = newSeason(pool, rainTerms(3, 2));
        coverSeason(rains(3, uint256(uint64(RAIN_THRESHOLD))));
        _finalize(seasonId);
        assertFalse(crop.seasonOf(seasonId).triggered);
        assertEq(crop.seasonOf(seasonId).noTriggerVotes, 3);
    }

    function test_Finalize_ExactlyKTriggerVotesTrigger() public {
        uint256 seasonId = newSeason(pool, rainTerms(5, 3));
        uint256[] memory r = rains(5, 9_000);
        r[1] = 100;
        r[3] = 200;
        r[4] = 4_999;
        coverSeason(r);
        _finalize(seasonId);
        ICropInsurance.Season memory s = crop.seasonOf(seasonId);
        assertTrue(s.triggered);
        assertEq(s.triggerVotes, 3);
        assertEq(s.noTriggerVotes, 2);
    }

    function test_Finalize_KMinusOneTriggerVotesDoNot() public {
        uint256 seasonId = newSeason(pool, rainTerms(5, 3));
        uint256[] memory r = rains(5, 9_000);
        r[1] = 100;
        r[3] = 200;
        coverSeason(r);
        _finalize(seasonId);
        assertFalse(crop.seasonOf(seasonId).triggered);
        assertEq(crop.seasonOf(seasonId).triggerVotes, 2);
    }

    function test_Finalize_HotDaysAboveTriggers() public {
        uint256 seasonId = newSeason(pool, heatTerms(3, 2, 3_500, 3));
        uint256 policyId = buy(farmer, seasonId, COVER, address(0));
        // stations 0 and 1 see 3 hot days, station 2 sees 2
        for (uint256 d = 0; d < 4; ++d) {
            uint64 ts = seasonStart + uint64(d) * 1 days;
            for (uint256 i = 0; i < 3; ++i) {
                bool hot = d < 3 && (i < 2 || d < 2);
                recordAt(i, ts, 0, hot ? int32(3_600) : int32(2_000));
            }
        }
        for (uint256 i = 0; i < 3; ++i) {
            recordAt(i, seasonEnd, 0, 2_000);
        }
        reportAfterEnd(3);
        assertEq(crop.stationSeason(seasonId, stations[2]).hotDays, 2);
        (ICropInsurance.Verdict v, int256 measured) = crop.verdictOf(seasonId, stations[0]);
        assertEq(uint8(v), uint8(ICropInsurance.Verdict.Trigger));
        assertEq(measured, 3);
        _finalize(seasonId);
        assertTrue(crop.seasonOf(seasonId).triggered);
        assertEq(crop.seasonOf(seasonId).triggerVotes, 2);
        crop.payOut(seasonId, 10);
        assertEq(token.balanceOf(farmer), COVER);
        assertEq(uint8(crop.coverOf(policyId).status), uint8(ICropInsurance.CoverStatus.Paid));
    }

    /// @dev A station abstains unless it reported within coverageSlack of the start AND of the end.
    function test_Verdict_AbstainsWithoutCoverageOfStartAndEnd() public {
        uint256 seasonId = newSeason(pool, rainTerms(4, 3));
        recordAt(0, seasonStart + SLACK, 0, 0); // edges: exactly the slack is enough
        recordAt(1, seasonStart + SLACK + 1, 0, 0); // starts too late
        recordAt(2, seasonStart, 0, 0);
        recordAt(3, seasonStart, 0, 0);
        recordAt(0, seasonEnd - SLACK, 100, 0);
        recordAt(1, seasonEnd - SLACK, 100, 0);
        recordAt(2, seasonEnd - SLACK - 1, 100, 0); // stops too early
        reportAfterEnd(3); // station 3 never reports again
        warpToFinalize();
        vm.expectEmit(address(crop));
        emit ICropInsurance.StationVerdict(seasonId, stations[0], ICropInsurance.Verdict.Trigger, 100);
        vm.expectEmit(address(crop));
        emit ICropInsurance.StationVerdict(seasonId, stations[1], ICropInsurance.Verdict.Abstain, 0);
        vm.expectEmit(address(crop));
        emit ICropInsurance.StationVerdict(seasonId, stations[2], ICropInsurance.Verdict.Abstain, 0);
        vm.expectEmit(address(crop));
        emit ICropInsurance.StationVerdict(seasonId, stations[3], ICropInsurance.Verdict.Abstain, 0);
        vm.expectEmit(address(crop));
        emit ICropInsurance.SeasonFinalized(seasonId, false, 1, 0, 3);
        crop.finalize(seasonId);
        // a season nobody observed can still be finalized: the insurer's pool is not stuck
        assertEq(crop.seasonsOfStation(stations[0]).length, 0);
    }

    function test_Finalize_ReleasesStationSlotsAndLaterObservationsDoNotTouchIt() public {
        uint256 seasonId = newSeason(pool, rainTerms(3, 2));
        _finalize(seasonId);
        for (uint256 i = 0; i < 3; ++i) {
            assertEq(crop.seasonsOfStation(stations[i]).length, 0);
        }
        // a late observation dated inside the window no longer changes the finalized season
        vm.warp(seasonEnd + FINALIZE_DELAY);
        assertEq(crop.record(PackedObservations.pack(one(obs(0, uint64(block.timestamp), 5, 0)))), 1);
        assertEq(crop.stationSeason(seasonId, stations[0]).firstTimestamp, 0);
    }

    function test_PayOut_ContinuesInPagesAndPaysEachPolicyOnce() public {
        uint256 seasonId = newSeason(pool, rainTerms(3, 2));
        uint256 n = 57;
        for (uint256 i = 0; i < n; ++i) {
            buy(address(uint160(0xB000 + i)), seasonId, 100, address(0));
        }
        coverSeason(rains(3, 0));
        _finalize(seasonId);
        assertEq(crop.poolOf(pool).locked, 0, "the pool is booked once, at finalize");
        assertEq(crop.payoutsDue(address(token)), 100 * n);
        vm.prank(relayer);
        assertEq(crop.payOut(seasonId, 50), 50);
        assertEq(crop.seasonOf(seasonId).paidUpTo, 50);
        assertEq(token.balanceOf(address(uint160(0xB000 + n - 1))), 0, "not yet");
        assertEq(crop.payoutsDue(address(token)), 700);
        vm.prank(relayer);
        assertEq(crop.payOut(seasonId, 5), 5);
        assertEq(crop.payOut(seasonId, 100), 2);
        assertEq(crop.payOut(seasonId, 100), 0);
        for (uint256 i = 0; i < n; ++i) {
            assertEq(token.balanceOf(address(uint160(0xB000 + i))), 100, "each paid its cover once");
        }
        assertEq(crop.payoutsDue(address(token)), 0);
    }

    // ---------------------------------------------------------------- hostile tokens and re-entry

    function _hostilePoolSeason(address hostile) internal returns (uint256 seasonId) {
        vm.prank(insurer);
        uint256 hPool = crop.createPool(hostile);
        // the hostile tokens are plain OZ ERC20s with a public mint
        (bool ok,) = hostile.call(abi.encodeWithSignature("mint(address,uint256)", insurer, POOL_FUNDS));
        assertTrue(ok);
        vm.startPrank(insurer);
        (ok,) = hostile.call(abi.encodeWithSignature("approve(address,uint256)", address(crop), POOL_FUNDS));
        assertTrue(ok);
        crop.depositToPool(hPool, POOL_FUNDS);
        vm.stopPrank();
        seasonId = newSeason(hPool, rainTerms(3, 2));
    }

    function _buyWith(address hostile, address who, uint256 seasonId, uint256 cover) internal returns (uint256) {
        uint256 premium = cover * PREMIUM_BPS / 10_000;
        (bool ok,) = hostile.call(abi.encodeWithSignature("mint(address,uint256)", who, premium));
        assertTrue(ok);
        vm.startPrank(who);
        (ok,) = hostile.call(abi.encodeWithSignature("approve(address,uint256)", address(crop), premium));
        assertTrue(ok);
        uint256 policyId = crop.buyCover(seasonId, cover, address(0));
        vm.stopPrank();
        return policyId;
    }

    /// @dev A token that refuses the push (paused, blacklisting) turns the payout into a pull credit; the
    /// finalization and the other books go through, and the beneficiary withdraws once the token works again.
    function test_Payout_FailedPushBecomesPullCredit() public {
        RevertingToken rev = new RevertingToken();
        uint256 seasonId = _hostilePoolSeason(address(rev));
        uint256 p1 = _buyWith(address(rev), farmer, seasonId, COVER);
        coverSeason(rains(3, 0));
        rev.setBroken(true);
        _finalize(seasonId);
        vm.expectEmit(address(crop));
        emit ICropInsurance.PayoutSent(p1, farmer, COVER);
        vm.expectEmit(address(crop));
        emit IPullPayments.Credited(address(rev), farmer, COVER);
        crop.payOut(seasonId, 10);
        assertEq(crop.withdrawable(address(rev), farmer), COVER);
        assertEq(crop.credited(address(rev)), COVER);
        assertEq(uint8(crop.coverOf(p1).status), uint8(ICropInsurance.CoverStatus.Paid));

        vm.expectRevert(abi.encodeWithSelector(RevertingToken.TokenBroken.selector));
        vm.prank(farmer);
        crop.withdraw(address(rev));
        rev.setBroken(false);
        vm.expectEmit(address(crop));
        emit IPullPayments.Withdrawn(address(rev), farmer, COVER);
        vm.prank(farmer);
        assertEq(crop.withdraw(address(rev)), COVER);
        assertEq(rev.balanceOf(farmer), COVER);
        assertEq(crop.withdrawable(address(rev), farmer), 0);
        vm.expectRevert(abi.encodeWithSelector(ICommonErrors.NothingToWithdraw.selector, address(rev), farmer));
        vm.prank(farmer);
        crop.withdraw(address(rev));
    }

    function test_Payout_FalseReturningTokenIsCreditedNotLost() public {
        FalseReturningToken f = new FalseReturningToken();
        uint256 seasonId = _hostilePoolSeason(address(f));
        _buyWith(address(f), farmer, seasonId, COVER);
        coverSeason(rains(3, 0));
        f.setLying(true);
        _finalize(seasonId);
        crop.payOut(seasonId, 10);
        assertEq(f.balanceOf(farmer), 0);
        assertEq(crop.withdrawable(address(f), farmer), COVER);
        f.setLying(false);
        vm.prank(farmer);
        crop.withdraw(address(f));
        assertEq(f.balanceOf(farmer), COVER);
    }

    /// @dev A token re-entering payOut during a payout push is refused by the guard: nobody is paid twice.
    function test_Payout_ReentrantTokenCannotPayTwice() public {
        ReentrantToken re = new ReentrantToken();
        uint256 seasonId = _hostilePoolSeason(address(re));
        _buyWith(address(re), farmer, seasonId, COVER);
        _buyWith(address(re), farmer2, seasonId, COVER);
        coverSeason(rains(3, 0));
        _finalize(seasonId);
        re.arm(address(crop), abi.encodeCall(crop.payOut, (seasonId, 10)));
        crop.payOut(seasonId, 1);
        assertTrue(re.reentered());
        assertFalse(re.reentrySucceeded());
        assertEq(re.balanceOf(farmer), COVER);
        assertEq(re.balanceOf(farmer2), 0, "the re-entry paid nobody");
        crop.payOut(seasonId, 1);
        assertEq(re.balanceOf(farmer2), COVER);
        assertEq(crop.payOut(seasonId, 10), 0);
        assertEq(re.balanceOf(address(crop)), crop.poolOf(crop.seasonOf(seasonId).poolId).assets);
    }

    function test_Withdraw_ReentrantTokenCannotDrainThePool() public {
        ReentrantToken re = new ReentrantToken();
        uint256 seasonId = _hostilePoolSeason(address(re));
        uint256 poolId = crop.seasonOf(seasonId).poolId;
        re.arm(address(crop), abi.encodeWithSignature("withdrawFromPool(uint256,uint256)", poolId, 1));
        vm.prank(insurer);
        crop.withdrawFromPool(poolId, POOL_FUNDS);
        assertTrue(re.reentered());
        assertFalse(re.reentrySucceeded());
        assertEq(re.balanceOf(insurer), POOL_FUNDS);
        assertEq(crop.poolOf(poolId).assets, 0);
    }

    // ---------------------------------------------------------------- fuzz: formulas and the hostile station

    /// @dev Rain verdict against an independent computation: measured = last − first register, Trigger iff below.
    function testFuzz_RainVerdictMatchesIndependentComputation(uint64 first, uint64 rain, int64 threshold) public {
        threshold = int64(bound(threshold, 1, type(int64).max));
        first = uint64(bound(first, 0, type(uint64).max / 2));
        rain = uint64(bound(rain, 0, type(uint64).max / 2));
        ICropInsurance.SeasonTerms memory t = rainTerms(3, 2);
        t.threshold = threshold;
        uint256 seasonId = newSeason(pool, t);
        recordAt(0, seasonStart, first, 0);
        recordAt(0, seasonEnd, first + rain, 0);
        reportAfterEnd(1);
        (ICropInsurance.Verdict v, int256 measured) = crop.verdictOf(seasonId, stations[0]);
        assertEq(measured, int256(uint256(rain)));
        bool expectTrigger = uint256(rain) < uint256(uint64(threshold));
        assertEq(uint8(v), uint8(expectTrigger ? ICropInsurance.Verdict.Trigger : ICropInsurance.Verdict.NoTrigger));
    }

    /// forge-config: ci.fuzz.runs = 500
    /// @dev Hot days against an independent count over arbitrary hourly-ish observations.
    function testFuzz_HotDaysMatchIndependentCount(uint256 seed, int32 threshold) public {
        threshold = int32(bound(threshold, -2_000, 5_000));
        uint256 seasonId = newSeason(pool, heatTerms(3, 2, threshold, 1));
        uint64 ts = seasonStart;
        uint256 expected;
        uint64 lastCounted = type(uint64).max;
        for (uint256 i = 0; i < 24; ++i) {
            uint256 r = uint256(keccak256(abi.encode(seed, i)));
            ts += uint64(r % 30 hours);
            int32 temp = int32(int256(r >> 128) % 6_000);
            if (temp >= threshold && ts / 1 days != lastCounted) {
                ++expected;
                lastCounted = ts / 1 days;
            }
            recordAt(0, ts, 0, temp);
        }
        assertEq(crop.stationSeason(seasonId, stations[0]).hotDays, expected);
    }

    /// forge-config: default.fuzz.runs = 128
    /// forge-config: ci.fuzz.runs = 500
    /// @dev n − 1 honest stations agree on the season (drought or not); the hostile one signs whatever it wants
    /// (any registers, temperatures, times, or nothing). The outcome is always the honest one.
    function testFuzz_OneHostileStationCannotFlipTheHonestOutcome(
        uint8 nSeed,
        uint8 kSeed,
        uint8 hostileSeed,
        bool drought,
        bool heatIndex,
        uint256 hostileData
    ) public {
        uint256 n = bound(nSeed, 3, 7);
        uint8 k = uint8(bound(kSeed, 2, n - 1));
        uint256 hostile = bound(hostileSeed, 0, n - 1);
        uint256 seasonId = newSeason(pool, heatIndex ? heatTerms(n, k, 3_500, 3) : rainTerms(n, k));
        uint256 policyId = buy(farmer, seasonId, COVER, address(0));

        vm.warp(seasonStart - 1 days);
        _hostile.ts = uint64(block.timestamp);
        _hostile.rain = 0;
        for (uint256 d = 0; d <= 10; ++d) {
            uint64 ts = seasonStart + uint64(d) * 3 days;
            if (ts > seasonEnd) ts = seasonEnd;
            vm.warp(ts);
            _honestDay(n, hostile, d, ts, drought);
            if (hostileData % 6 != 0) _hostileDay(hostile, hostileData, d);
        }
        vm.warp(seasonEnd + 1);
        _honestDay(n, hostile, 10, seasonEnd + 1, drought); // each honest station reports once after the end
        warpToFinalize();
        crop.finalize(seasonId);
        crop.payOut(seasonId, 10);
        assertEq(crop.seasonOf(seasonId).triggered, drought, "the honest n - 1 stations decide");
        assertEq(token.balanceOf(farmer), drought ? COVER : 0);
        assertEq(
            uint8(crop.coverOf(policyId).status),
            uint8(drought ? ICropInsurance.CoverStatus.Paid : ICropInsurance.CoverStatus.Expired)
        );
    }

    struct HostileState {
        uint64 ts;
        uint64 rain;
    }

    HostileState internal _hostile;

    /// @dev Honest stations: a drought is 10 mm over the season and 4 hot days; otherwise 200 mm and none.
    function _honestDay(uint256 n, uint256 hostile, uint256 d, uint64 ts, bool drought) internal {
        for (uint256 i = 0; i < n; ++i) {
            if (i == hostile) continue;
            recordAt(i, ts, uint64(1_000 + d * (drought ? 100 : 2_000)), drought && d < 4 ? int32(3_700) : int32(2_500));
        }
    }

    /// @dev On about half the days the hostile station signs two observations with arbitrary rain, temperature and
    /// time (any time since its last one, up to now); the second may roll its register back.
    function _hostileDay(uint256 hostile, uint256 hostileData, uint256 d) internal {
        uint256 r = uint256(keccak256(abi.encode(hostileData, d)));
        if (r % 2 == 0) return;
        _hostile.rain += uint64(r % 100_000);
        _hostile.ts = uint64(bound(r >> 64, _hostile.ts, block.timestamp));
        ICropInsurance.SignedObservation[] memory b = new ICropInsurance.SignedObservation[](2);
        b[0] = obs(hostile, _hostile.ts, _hostile.rain, int32(int256(r >> 192) % 10_000));
        b[1] = obs(hostile, _hostile.ts, uint64(r >> 100) % 3, int32(int256(r >> 160) % 10_000));
        crop.record(PackedObservations.pack(b));
    }

    // ---------------------------------------------------------------- gas

    /// @dev Gas per recorded observation as a relayer pays it (21,000 + calldata + execution), in the steady
    /// state (each station already observed once this season; its state and season figures are updated), every
    /// station serving one open season, storage cold as at the start of a transaction.
    function test_Gas_RecordPerObservation() public {
        uint256 total = 111;
        address[] memory extra = new address[](total);
        uint256[] memory keys = new uint256[](total);
        for (uint256 i = 0; i < total; ++i) {
            keys[i] = deviceKey(2_000 + i);
            extra[i] = registerDevice(keys[i], IDeviceRegistry.DeviceKind.WeatherStation, owner);
            vm.prank(owner);
            crop.allowInsurer(extra[i], insurer, true);
        }
        for (uint256 j = 0; j < total / 3; ++j) {
            ICropInsurance.SeasonTerms memory t = rainTerms(3, 2);
            for (uint256 i = 0; i < 3; ++i) {
                t.stations[i] = extra[j * 3 + i];
            }
            newSeason(pool, t);
        }
        vm.warp(seasonStart);
        ICropInsurance.SignedObservation[] memory first = new ICropInsurance.SignedObservation[](total);
        for (uint256 i = 0; i < total; ++i) {
            first[i] = signObs(keys[i], extra[i], 1, seasonStart, 1_000, 2_500);
        }
        assertEq(crop.record(PackedObservations.pack(first)), total);
        vm.warp(seasonStart + 1 hours);
        uint256[3] memory sizes = [uint256(1), 10, 100];
        uint256 next;
        for (uint256 s = 0; s < 3; ++s) {
            uint256 n = sizes[s];
            ICropInsurance.SignedObservation[] memory batch = new ICropInsurance.SignedObservation[](n);
            for (uint256 i = 0; i < n; ++i) {
                batch[i] = signObs(keys[next], extra[next], 2, uint64(block.timestamp), 1_250, 2_500);
                ++next;
            }
            bytes memory data = abi.encodeCall(crop.record, (PackedObservations.pack(batch)));
            vm.cool(address(crop));
            vm.cool(address(registry));
            vm.prank(relayer);
            assertEq(crop.record(PackedObservations.pack(batch)), n);
            uint256 txGas = 21_000 + calldataGas(data) + vm.lastCallGas().gasTotalUsed;
            console.log("record batch", n, "gas per observation", txGas / n);
        }
    }

    function test_Gas_FinalizeAndPayOutPerPolicy() public {
        uint256 seasonId = newSeason(pool, rainTerms(5, 3));
        for (uint256 i = 0; i < 50; ++i) {
            buy(address(uint160(0xC000 + i)), seasonId, 100, address(0));
        }
        coverSeason(rains(5, 0));
        warpToFinalize();
        vm.cool(address(crop));
        crop.finalize(seasonId);
        console.log("finalize 5 stations", vm.lastCallGas().gasTotalUsed);
        vm.cool(address(crop));
        vm.cool(address(token));
        crop.payOut(seasonId, 50);
        uint256 used = vm.lastCallGas().gasTotalUsed;
        console.log("payOut 50 policies", used, "per payout (approx)", used / 50);
    }
}
