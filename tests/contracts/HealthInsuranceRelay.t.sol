// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IHealthInsurance} from "../../contracts/interfaces/IHealthInsurance.sol";
import {HealthFixture} from "./utils/HealthFixture.sol";

/// @dev "Relayers choose nothing": a relayer that withholds the best summaries, reorders them, splits them into
/// batches or races the close changes when the holder's discounts arrive, never how much they are. Every scenario
/// ends with the same premium, and the same net paid by the holder, as the honest relay of every summary at once.
contract HealthInsuranceRelayTest is HealthFixture {
    uint32 internal constant PERIODS = 6;
    uint256 internal constant DEPOSIT = 10 * uint256(BASE_RATE);
    /// @dev The tiers the wearable signed for periods 0..5; period 3 also got a worse duplicate (tier 0).
    uint8[6] internal tiers = [3, 1, 0, 2, 3, 1];

    uint256 internal key;
    address internal wearable;

    function setUp() public override {
        super.setUp();
        key = deviceKey(11);
        wearable = registerWearable(key);
    }

    function _open() internal returns (uint256 id) {
        id = openHealthPolicy(wearable, defaultTerms(PERIODS), DEPOSIT);
    }

    function _summaries(uint256 id) internal view returns (IHealthInsurance.SignedSummary[] memory all) {
        all = new IHealthInsurance.SignedSummary[](PERIODS + 1);
        for (uint32 k = 0; k < PERIODS; ++k) {
            all[k] = summaryOf(key, id, k, tiers[k]);
        }
        uint64 end = health.policyOf(id).start + 4 * uint64(PERIOD);
        all[PERIODS] = signSummary(key, id, 40, end + 5, 3, 0);
    }

    function _relay(IHealthInsurance.SignedSummary[] memory all, uint256[] memory order, uint256 from, uint256 to)
        internal
    {
        IHealthInsurance.SignedSummary[] memory batch = new IHealthInsurance.SignedSummary[](to - from);
        for (uint256 i = from; i < to; ++i) {
            batch[i - from] = all[order[i]];
        }
        vm.prank(relayer);
        health.settle(packSummaries(batch));
    }

    function _order(uint256[7] memory o) internal pure returns (uint256[] memory out) {
        out = new uint256[](7);
        for (uint256 i = 0; i < 7; ++i) {
            out[i] = o[i];
        }
    }

    /// @dev The honest outcome: every period at its best signed tier, the policy closed.
    function _honest() internal returns (uint256 premium, uint256 net) {
        uint256 snapshot = vm.snapshotState();
        uint256 id = _open();
        vm.warp(block.timestamp + PERIODS * uint256(PERIOD));
        IHealthInsurance.SignedSummary[] memory all = _summaries(id);
        _relay(all, _order([uint256(0), 1, 2, 3, 4, 5, 6]), 0, 7);
        health.close(id);
        premium = health.policyOf(id).premium;
        net = holderNet(id);
        vm.revertToState(snapshot);
    }

    function _assertHonest(uint256 id, uint256 premium, uint256 net) internal {
        if (health.policyOf(id).status == IHealthInsurance.PolicyStatus.Active) health.close(id);
        assertEq(health.policyOf(id).premium, premium, "premium");
        assertEq(holderNet(id), net, "holder's net payment");
        uint256 credit = health.withdrawable(address(token), holder);
        if (credit > 0) {
            vm.prank(holder);
            health.withdraw(address(token));
        }
        assertEq(token.balanceOf(holder), DEPOSIT - net, "what came back to the holder's wallet");
    }

    function test_Honest_PremiumIsTheBestTierOfEveryPeriod() public {
        (uint256 premium,) = _honest();
        uint256 b = BASE_RATE;
        assertEq(premium, 2 * (b * 6_500 / 10_000) + 2 * (b * 9_000 / 10_000) + b + b * 8_000 / 10_000);
    }

    function test_Attack_WithholdingTheBestSummariesUntilAfterClose() public {
        (uint256 premium, uint256 net) = _honest();
        uint256 id = _open();
        vm.warp(block.timestamp + PERIODS * uint256(PERIOD));
        IHealthInsurance.SignedSummary[] memory all = _summaries(id);
        // Only the poor periods and the worse duplicate first; the close charges the rest the base rate.
        uint256[] memory order = _order([uint256(1), 2, 5, 6, 0, 3, 4]);
        _relay(all, order, 0, 4);
        health.close(id);
        assertGt(health.policyOf(id).premium, premium, "the withheld discounts are missing for now");
        vm.warp(block.timestamp + 400 days);
        _relay(all, order, 4, 7);
        _assertHonest(id, premium, net);
    }

    function test_Attack_ReorderingEveryWay() public {
        (uint256 premium, uint256 net) = _honest();
        uint256 id = _open();
        vm.warp(block.timestamp + PERIODS * uint256(PERIOD));
        // The worse duplicate of period 3 after its better summary: it is Replayed, not counted.
        _relay(_summaries(id), _order([uint256(5), 3, 6, 0, 4, 2, 1]), 0, 7);
        _assertHonest(id, premium, net);
    }

    function test_Attack_SplittingIntoBatchesAsThePeriodsEnd() public {
        (uint256 premium, uint256 net) = _honest();
        uint256 id = _open();
        uint256 start = block.timestamp;
        // One summary per transaction, each as soon as its period is over, the duplicate last.
        for (uint32 k = 0; k < PERIODS; ++k) {
            vm.warp(start + (k + 1) * uint256(PERIOD) + 1);
            _relay(_summaries(id), _order([uint256(k), 0, 0, 0, 0, 0, 0]), 0, 1);
        }
        vm.warp(start + PERIODS * uint256(PERIOD));
        vm.warp(block.timestamp + 1);
        _relay(_summaries(id), _order([uint256(6), 0, 0, 0, 0, 0, 0]), 0, 1);
        _assertHonest(id, premium, net);
    }

    function test_Attack_RacingTheCloseInOneBlock() public {
        (uint256 premium, uint256 net) = _honest();
        uint256 id = _open();
        vm.warp(block.timestamp + PERIODS * uint256(PERIOD));
        IHealthInsurance.SignedSummary[] memory all = _summaries(id);
        uint256[] memory order = _order([uint256(6), 0, 1, 2, 3, 4, 5]);
        _relay(all, order, 0, 3);
        health.close(id); // the racing close lands between two batches of the same block
        _relay(all, order, 3, 7);
        _assertHonest(id, premium, net);
    }

    function test_Attack_RelayingTheSameBatchTwice() public {
        (uint256 premium, uint256 net) = _honest();
        uint256 id = _open();
        vm.warp(block.timestamp + PERIODS * uint256(PERIOD));
        IHealthInsurance.SignedSummary[] memory all = _summaries(id);
        uint256[] memory order = _order([uint256(0), 1, 2, 3, 4, 5, 6]);
        _relay(all, order, 0, 7);
        health.close(id);
        _relay(all, order, 0, 7);
        _assertHonest(id, premium, net);
    }
}
