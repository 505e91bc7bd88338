// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {HealthInsurance} from "../../../contracts/HealthInsurance.sol";
import {IDeviceRegistry} from "../../../contracts/interfaces/IDeviceRegistry.sol";
import {IHealthInsurance} from "../../../contracts/interfaces/IHealthInsurance.sol";
import {Fixture} from "./Fixture.sol";

/// @dev Adds HealthInsurance (deployed after the other products, as in production) and ActivitySummary signing.
abstract contract HealthFixture is Fixture {
    HealthInsurance internal health;

    address internal insurer = makeAddr("insurer");
    address internal holder = makeAddr("holder");

    uint128 internal constant BASE_RATE = 1_000_000;
    uint32 internal constant PERIOD = 1 weeks;

    function setUp() public virtual override {
        super.setUp();
        health = new HealthInsurance(registry);
    }

    /// @dev Tier discounts 0 %, 10 %, 20 %, 35 %; thresholds 5k/8k/12k steps and 20/30/60 active minutes.
    function defaultTerms(uint32 periods) internal pure returns (IHealthInsurance.Terms memory t) {
        t.baseRate = BASE_RATE;
        t.periodLength = PERIOD;
        t.periods = periods;
        t.discountBps = [uint16(0), 1_000, 2_000, 3_500];
        t.minSteps = [uint32(35_000), 56_000, 84_000];
        t.minActiveMinutes = [uint16(140), 210, 420];
    }

    function registerWearable(uint256 key) internal returns (address) {
        return registerDevice(key, IDeviceRegistry.DeviceKind.Wearable, owner);
    }

    /// @dev Offer (insurer) + accept (holder) with a token deposit; returns the policy id.
    function openHealthPolicy(address wearable, IHealthInsurance.Terms memory terms, uint256 deposit)
        internal
        returns (uint256 policyId)
    {
        vm.prank(insurer);
        policyId = health.offer(holder, wearable, address(token), terms);
        token.mint(holder, deposit);
        vm.startPrank(holder);
        token.approve(address(health), deposit);
        health.accept(policyId, deposit);
        vm.stopPrank();
    }

    function signSummary(uint256 key, uint256 policyId, uint64 seq, uint64 timestamp, uint32 period, uint8 tier)
        internal
        view
        returns (IHealthInsurance.SignedSummary memory s)
    {
        bytes32 digest = health.hashActivitySummary(policyId, seq, timestamp, period, tier);
        (bytes32 r, bytes32 vs) = vm.signCompact(key, digest);
        s = IHealthInsurance.SignedSummary(policyId, seq, timestamp, period, tier, r, vs);
    }

    /// @dev The summary of `period` as the wearable signs it: one second after the period ended.
    function summaryOf(uint256 key, uint256 policyId, uint32 period, uint8 tier)
        internal
        view
        returns (IHealthInsurance.SignedSummary memory)
    {
        uint64 end = health.policyOf(policyId).start + uint64(period + 1) * PERIOD;
        return signSummary(key, policyId, period + 1, end + 1, period, tier);
    }

    /// @dev The packed batch {HealthInsurance.settle} takes.
    function packSummaries(IHealthInsurance.SignedSummary[] memory batch) internal pure returns (bytes memory out) {
        for (uint256 i = 0; i < batch.length; ++i) {
            IHealthInsurance.SignedSummary memory s = batch[i];
            out = bytes.concat(out, abi.encodePacked(s.policyId, s.seq, s.timestamp, s.period, s.tier, s.r, s.vs));
        }
    }

    function one(IHealthInsurance.SignedSummary memory s)
        internal
        pure
        returns (IHealthInsurance.SignedSummary[] memory batch)
    {
        batch = new IHealthInsurance.SignedSummary[](1);
        batch[0] = s;
    }

    /// @dev What the holder paid in the end: the deposit less everything sent or credited back.
    function holderNet(uint256 policyId) internal view returns (uint256) {
        IHealthInsurance.Policy memory p = health.policyOf(policyId);
        return p.deposited - p.refunded;
    }
}
