// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ICropInsurance} from "../../contracts/interfaces/ICropInsurance.sol";
import {CropFixture} from "./utils/CropFixture.sol";
import {PackedObservations} from "./utils/PackedObservations.sol";
import {GasBurningReceiver, HookToken} from "./utils/Hostile.sol";

/// @dev The attacks of the "relayers choose nothing" review, one test each, named after the scenario.
contract CropInsuranceScenariosTest is CropFixture {
    uint256 internal pool;
    uint256 internal constant POOL_FUNDS = 100_000;
    uint256 internal constant COVER = 10_000;

    function setUp() public override {
        super.setUp();
        pool = newPool(POOL_FUNDS);
    }

    /// @dev Stations 0..n-1 report once after the end, so that the contract knows it holds every observation of
    /// theirs dated up to the end.
    function _reportAfterEnd(uint256 n, uint64 rainfall) internal {
        uint64 ts = seasonEnd + 1 hours;
        vm.warp(ts);
        ICropInsurance.SignedObservation[] memory batch = new ICropInsurance.SignedObservation[](n);
        for (uint256 i = 0; i < n; ++i) {
            batch[i] = obs(i, ts, rainfall, 2_000);
        }
        assertEq(crop.record(PackedObservations.pack(batch)), n, "after-end observations recorded");
    }

    // ---------------------------------------------------------------- scenario 1

    /// @dev 3 stations, k = 2, one hot day (≥ 40 °C) triggers. Each station's afternoon observation carries the
    /// 40 °C since its previous one; a relayer who sees the honest batch relays only each station's LAST
    /// observation first. Before the fix the afternoons were Replayed for ever: 0 trigger votes instead of 3.
    function test_Scenario1_RelayingOnlyLastObservationCannotEraseHotDays() public {
        uint256 seasonId = newSeason(pool, heatTerms(3, 2, 4_000, 1));
        uint256 policyId = buy(farmer, seasonId, COVER, address(0));
        vm.warp(seasonStart);
        ICropInsurance.SignedObservation[] memory first = new ICropInsurance.SignedObservation[](3);
        for (uint256 i = 0; i < 3; ++i) {
            first[i] = obs(i, seasonStart, 0, 2_000);
        }
        assertEq(crop.record(PackedObservations.pack(first)), 3);

        vm.warp(seasonEnd);
        ICropInsurance.SignedObservation[] memory honest = new ICropInsurance.SignedObservation[](6);
        ICropInsurance.SignedObservation[] memory lastOnly = new ICropInsurance.SignedObservation[](3);
        for (uint256 i = 0; i < 3; ++i) {
            honest[2 * i] = obs(i, seasonStart + 1 days + 14 hours, 0, 4_000); // the hot afternoon
            honest[2 * i + 1] = obs(i, seasonEnd, 0, 2_000);
            lastOnly[i] = honest[2 * i + 1];
        }
        vm.prank(relayer);
        crop.record(PackedObservations.pack(lastOnly)); // the front-runner
        crop.record(PackedObservations.pack(honest)); // the honest relayer, one block later
        _reportAfterEnd(3, 0);

        warpToFinalize();
        crop.finalize(seasonId);
        ICropInsurance.Season memory s = crop.seasonOf(seasonId);
        assertEq(s.triggerVotes, 3, "every station saw its hot afternoon");
        assertTrue(s.triggered, "the farmer keeps the cover");
        crop.payOut(seasonId, 10);
        assertEq(token.balanceOf(farmer), COVER);
        assertEq(uint8(crop.coverOf(policyId).status), uint8(ICropInsurance.CoverStatus.Paid));
    }

    /// @dev Rain index, 50 mm threshold. 55 mm fell: a 30 mm storm right after the start, 25 mm later. A relayer
    /// relays only each station's storm observation first, so the start observation is lost and the first in-window
    /// reading is after the storm. Before the fix every station measured 25 mm and the season triggered.
    function test_Scenario1_RelayingOnlyLastObservationCannotMoveRainOutOfTheWindow() public {
        uint256 seasonId = newSeason(pool, rainTerms(3, 2));
        buy(farmer, seasonId, COVER, address(0));
        vm.warp(seasonStart + 2 hours);
        ICropInsurance.SignedObservation[] memory honest = new ICropInsurance.SignedObservation[](6);
        ICropInsurance.SignedObservation[] memory lastOnly = new ICropInsurance.SignedObservation[](3);
        for (uint256 i = 0; i < 3; ++i) {
            honest[2 * i] = obs(i, seasonStart, 1_000, 2_000);
            honest[2 * i + 1] = obs(i, seasonStart + 2 hours, 4_000, 2_000); // the 30 mm storm
            lastOnly[i] = honest[2 * i + 1];
        }
        vm.prank(relayer);
        crop.record(PackedObservations.pack(lastOnly));
        crop.record(PackedObservations.pack(honest));

        vm.warp(seasonEnd);
        ICropInsurance.SignedObservation[] memory atEnd = new ICropInsurance.SignedObservation[](3);
        for (uint256 i = 0; i < 3; ++i) {
            atEnd[i] = obs(i, seasonEnd, 6_500, 2_000);
        }
        crop.record(PackedObservations.pack(atEnd));
        _reportAfterEnd(3, 6_500);

        for (uint256 i = 0; i < 3; ++i) {
            (ICropInsurance.Verdict v, int256 measured) = crop.verdictOf(seasonId, stations[i]);
            assertEq(measured, 5_500, "55 mm measured");
            assertEq(uint8(v), uint8(ICropInsurance.Verdict.NoTrigger));
        }
        warpToFinalize();
        crop.finalize(seasonId);
        assertFalse(crop.seasonOf(seasonId).triggered, "the insurer does not pay for a wet season");
    }

    /// @dev The relayer withholds each station's last observation (a 55 mm storm just before the end) past the
    /// finalize delay. Before the fix the stations voted on what was relayed (5 mm: Trigger) and the insurer paid;
    /// now a station votes only once an observation dated after the end proves the contract has all its earlier
    /// ones, and abstains otherwise: withholding costs the vote, it never changes it.
    function test_Scenario1_WithheldLastObservationsMakeStationsAbstainNotVoteOnPartOfTheSeason() public {
        uint256 seasonId = newSeason(pool, rainTerms(3, 2));
        buy(farmer, seasonId, COVER, address(0));
        coverSeasonUntil(3, seasonEnd - 2 hours, 500);
        // each station's storm at the end is signed but never relayed
        warpToFinalize();
        for (uint256 i = 0; i < 3; ++i) {
            (ICropInsurance.Verdict v,) = crop.verdictOf(seasonId, stations[i]);
            assertEq(uint8(v), uint8(ICropInsurance.Verdict.Abstain), "no vote on part of the season");
        }
        crop.finalize(seasonId);
        assertFalse(crop.seasonOf(seasonId).triggered);
        assertEq(crop.seasonOf(seasonId).abstentions, 3);
    }

    /// @dev Stations 0..n-1 observe at the start and at `lastAt`, `rain` apart.
    function coverSeasonUntil(uint256 n, uint64 lastAt, uint64 rain) internal {
        vm.warp(seasonStart);
        for (uint256 i = 0; i < n; ++i) {
            assertEq(crop.record(PackedObservations.pack(one(obs(i, seasonStart, 1_000, 2_000)))), 1);
        }
        vm.warp(lastAt);
        for (uint256 i = 0; i < n; ++i) {
            assertEq(crop.record(PackedObservations.pack(one(obs(i, lastAt, 1_000 + rain, 2_000)))), 1);
        }
    }

    // ---------------------------------------------------------------- scenario 3

    /// @dev 1,000 covers of 1 base unit (premium 1 each) used to fill the season's policy cap.
    function test_Scenario3_DustCoversCannotBlockASeason() public {
        uint256 seasonId = newSeason(pool, rainTerms(3, 2));
        address duster = makeAddr("duster");
        token.mint(duster, 1_000);
        vm.startPrank(duster);
        token.approve(address(crop), type(uint256).max);
        for (uint256 i = 0; i < 1_000; ++i) {
            crop.buyCover(seasonId, 1, address(0));
        }
        vm.stopPrank();
        uint256 policyId = buy(farmer, seasonId, COVER, address(0));
        assertEq(crop.coverOf(policyId).cover, COVER, "the real farmer is covered");
    }

    // ---------------------------------------------------------------- scenario 4

    /// @dev The pool token calls recipient hooks; a 1-unit cover's beneficiary burns all the gas it gets. Before
    /// the fix the first payout slice inside finalize ran out of gas even with a 36M-gas block, and a triggered
    /// season was never paid.
    function test_Scenario4_HostileBeneficiaryCannotBrickFinalizeOrOtherPayouts() public {
        HookToken hook = new HookToken();
        vm.prank(insurer);
        uint256 hPool = crop.createPool(address(hook));
        hook.mint(insurer, POOL_FUNDS);
        vm.startPrank(insurer);
        hook.approve(address(crop), POOL_FUNDS);
        crop.depositToPool(hPool, POOL_FUNDS);
        vm.stopPrank();
        uint256 seasonId = newSeason(hPool, rainTerms(3, 2));

        GasBurningReceiver burner = new GasBurningReceiver();
        hook.setHooked(address(burner), true);
        address attacker = makeAddr("attacker");
        hook.mint(attacker, 1);
        vm.startPrank(attacker);
        hook.approve(address(crop), 1);
        crop.buyCover(seasonId, 1, address(burner));
        vm.stopPrank();
        uint256 farmers = 49;
        for (uint256 i = 0; i < farmers; ++i) {
            address f = address(uint160(0xD000 + i));
            hook.mint(f, 5);
            vm.startPrank(f);
            hook.approve(address(crop), 5);
            crop.buyCover(seasonId, 100, address(0));
            vm.stopPrank();
        }
        coverSeason(rains(3, 0));
        _reportAfterEnd(3, 1_000);
        warpToFinalize();

        (bool ok,) = address(crop).call{gas: 36_000_000}(abi.encodeCall(crop.finalize, (seasonId)));
        assertTrue(ok, "finalize fits a 36M-gas block");
        assertTrue(crop.seasonOf(seasonId).triggered);
        (ok,) = address(crop).call{gas: 36_000_000}(abi.encodeCall(crop.payOut, (seasonId, farmers + 1)));
        assertTrue(ok, "a payout page fits a 36M-gas block");
        for (uint256 i = 0; i < farmers; ++i) {
            assertEq(hook.balanceOf(address(uint160(0xD000 + i))), 100, "every other farmer is paid");
        }
        assertEq(crop.withdrawable(address(hook), address(burner)), 1, "the hostile payee is credited instead");
    }

    // ---------------------------------------------------------------- scenario 7a

    /// @dev A zero slack needs observations at exactly the start and the end; a zero delay lets finalize race the
    /// last observations. Both made a trigger practically impossible and were accepted.
    function test_Scenario7a_RevertWhen_CreateSeason_ZeroSlackOrZeroFinalizeDelay() public {
        ICropInsurance.SeasonTerms memory t = rainTerms(3, 2);
        t.coverageSlack = 0;
        vm.expectRevert(
            abi.encodeWithSelector(ICropInsurance.CoverageSlackTooShort.selector, 0, crop.MIN_COVERAGE_SLACK())
        );
        newSeason(pool, t);
        t = rainTerms(3, 2);
        t.finalizeDelay = 0;
        vm.expectRevert(
            abi.encodeWithSelector(ICropInsurance.FinalizeDelayTooShort.selector, 0, crop.MIN_FINALIZE_DELAY())
        );
        newSeason(pool, t);
        // one second under the floors is refused too; the floors themselves (the demo's terms) are accepted
        t = rainTerms(3, 2);
        t.coverageSlack = crop.MIN_COVERAGE_SLACK() - 1;
        vm.expectRevert(
            abi.encodeWithSelector(
                ICropInsurance.CoverageSlackTooShort.selector, t.coverageSlack, crop.MIN_COVERAGE_SLACK()
            )
        );
        newSeason(pool, t);
        t = rainTerms(3, 2);
        t.finalizeDelay = crop.MIN_FINALIZE_DELAY() - 1;
        vm.expectRevert(
            abi.encodeWithSelector(
                ICropInsurance.FinalizeDelayTooShort.selector, t.finalizeDelay, crop.MIN_FINALIZE_DELAY()
            )
        );
        newSeason(pool, t);
        t = rainTerms(3, 2);
        t.coverageSlack = crop.MIN_COVERAGE_SLACK();
        t.finalizeDelay = crop.MIN_FINALIZE_DELAY();
        newSeason(pool, t);
    }

    // ---------------------------------------------------------------- attacker review

    /// @dev A stranger named a station in seasons of his own pool, with no funds and no cover, starting 399 days
    /// ahead, 8 times: every slot of 3 stations held for ~400 days for 2.6 M gas, and the insurer's real season
    /// reverted StationBusy (a released slot was taken back the same way). Now only an insurer the station's owner
    /// allowed can name the station.
    function test_Review_StrangerFillsStationSlotsAndBlocksRealSeasons() public {
        address stranger = makeAddr("stranger");
        vm.prank(stranger);
        uint256 strangerPool = crop.createPool(address(token));
        ICropInsurance.SeasonTerms memory t = rainTerms(3, 2);
        t.start = uint64(block.timestamp + 399 days);
        t.saleEnd = t.start;
        t.end = t.start + 1 days;
        for (uint256 i = 0; i < crop.MAX_SEASONS_PER_STATION(); ++i) {
            vm.expectRevert(abi.encodeWithSelector(ICropInsurance.StationNotAllowed.selector, stations[0], stranger));
            vm.prank(stranger);
            crop.createSeason(strangerPool, t);
        }
        assertEq(crop.seasonsOfStation(stations[0]).length, 0, "no slot taken");
        // The insurer the stations' owner allowed opens its season.
        uint256 seasonId = newSeason(pool, rainTerms(3, 2));
        assertEq(crop.seasonsOfStation(stations[0])[0], seasonId);
    }

    /// @dev 5 stations, k = 3; stations 0..2 measured a drought (10 mm < 50 mm), 3 and 4 measured 100 mm. After the
    /// end, with every measurement on chain and `verdictOf` showing the votes, the owner of station 0 released it:
    /// 2 Trigger votes, the season did not trigger and the farmer's 100,000 cover was never paid. Now a station can
    /// be released only before the season's saleEnd, when no buyer has yet relied on the final station set.
    function test_Review_OneStationOwnerBlocksATriggeredSeasonWithHindsight() public {
        uint256 bigPool = newPool(1_000_000);
        uint256 seasonId = newSeason(bigPool, rainTerms(5, 3));
        buy(farmer, seasonId, 100_000, farmer);
        uint256[] memory rain = new uint256[](5);
        rain[0] = 1_000;
        rain[1] = 1_000;
        rain[2] = 1_000;
        rain[3] = 10_000;
        rain[4] = 10_000;
        coverSeason(rain);
        (ICropInsurance.Verdict v,) = crop.verdictOf(seasonId, stations[0]);
        assertEq(uint8(v), uint8(ICropInsurance.Verdict.Trigger), "station 0 votes Trigger");

        vm.expectRevert(abi.encodeWithSelector(ICropInsurance.ReleaseClosed.selector, seasonId, seasonStart));
        vm.prank(owner);
        crop.releaseStation(seasonId, stations[0]);

        warpToFinalize();
        crop.finalize(seasonId);
        assertTrue(crop.seasonOf(seasonId).triggered, "3 of 3 needed");
        assertEq(crop.seasonOf(seasonId).triggerVotes, 3);
        crop.payOut(seasonId, 10);
        assertEq(token.balanceOf(farmer), 100_000, "the farmer is paid the cover");
    }
}
