// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "forge-std/Test.sol";

import {HealthInsurance} from "../../../contracts/HealthInsurance.sol";
import {IHealthInsurance} from "../../../contracts/interfaces/IHealthInsurance.sol";
import {TestToken} from "../../../contracts/test/TestToken.sol";
import {HealthFixture} from "../utils/HealthFixture.sol";

/// @dev An adversarial relayer: relays any subset of the signed summaries (several per period, of different tiers),
/// in any order and batching, interleaved with time jumps, closes, earnings withdrawals and credit pulls.
contract HealthRelayHandler is Test {
    HealthInsurance public health;
    TestToken public token;
    address public holder;
    address public insurer;
    uint256[] public ids;
    bytes[] internal items; // every signed summary, packed
    uint256 public relays;
    uint256 public closes;
    uint256 public creditsPulled;

    constructor(HealthInsurance health_, TestToken token_, address holder_, address insurer_) {
        health = health_;
        token = token_;
        holder = holder_;
        insurer = insurer_;
    }

    function add(uint256 id, bytes[] memory signed) external {
        ids.push(id);
        for (uint256 i = 0; i < signed.length; ++i) {
            items.push(signed[i]);
        }
    }

    function idsLength() external view returns (uint256) {
        return ids.length;
    }

    function itemsLength() external view returns (uint256) {
        return items.length;
    }

    function item(uint256 i) external view returns (bytes memory) {
        return items[i];
    }

    /// @dev Relay up to 8 summaries picked (with repeats) by the seed, in the seed's order, as one batch.
    function relay(uint256 seed, uint8 count) external {
        uint256 n = bound(count, 1, 8);
        bytes memory batch;
        for (uint256 i = 0; i < n; ++i) {
            batch = bytes.concat(batch, items[uint256(keccak256(abi.encode(seed, i))) % items.length]);
        }
        health.settle(batch);
        ++relays;
    }

    function wait(uint32 seconds_) external {
        vm.warp(block.timestamp + bound(seconds_, 1, 3 weeks));
    }

    function close(uint256 seed) external {
        uint256 id = ids[seed % ids.length];
        IHealthInsurance.Policy memory p = health.policyOf(id);
        uint256 end = p.start + uint256(p.terms.periodLength) * p.terms.periods;
        if (p.status != IHealthInsurance.PolicyStatus.Active || block.timestamp < end) return;
        health.close(id);
        ++closes;
    }

    function withdrawEarnings(uint256 seed) external {
        uint256 id = ids[seed % ids.length];
        if (health.policyOf(id).earnings == 0) return;
        vm.prank(insurer);
        health.withdrawEarnings(id);
    }

    function pullCredit() external {
        if (health.withdrawable(address(token), holder) == 0) return;
        vm.prank(holder);
        health.withdraw(address(token));
        ++creditsPulled;
    }
}

contract HealthInsuranceInvariantsTest is HealthFixture {
    HealthRelayHandler internal handler;
    uint32 internal constant PERIODS = 4;
    /// @dev The honest outcome per policy: every period at the best tier the wearable signed for it.
    mapping(uint256 id => uint256) internal honestPremium;
    uint256[] internal deposits;

    function setUp() public override {
        super.setUp();
        handler = new HealthRelayHandler(health, token, holder, insurer);
        uint256 key = deviceKey(77);
        address wearable = registerWearable(key);
        // A deposit that covers the premium, one that leaves arrears, one in between.
        uint256[3] memory amounts = [10 * uint256(BASE_RATE), uint256(BASE_RATE), 3 * uint256(BASE_RATE)];
        for (uint256 j = 0; j < 3; ++j) {
            uint256 id = openHealthPolicy(wearable, defaultTerms(PERIODS), amounts[j]);
            deposits.push(amounts[j]);
            bytes[] memory signed = new bytes[](2 * PERIODS);
            uint256 premium;
            for (uint32 k = 0; k < PERIODS; ++k) {
                // Two summaries per period with pseudo-random tiers: the better one must count, once.
                uint8 a = uint8(uint256(keccak256(abi.encode(j, k, "a"))) % 4);
                uint8 b = uint8(uint256(keccak256(abi.encode(j, k, "b"))) % 4);
                signed[2 * k] = packSummaries(one(summaryOf(key, id, k, a)));
                IHealthInsurance.SignedSummary memory s = summaryOf(key, id, k, b);
                s = signSummary(key, id, 100 + k, s.timestamp + 7, k, b);
                signed[2 * k + 1] = packSummaries(one(s));
                uint8 best = a > b ? a : b;
                premium += BASE_RATE - uint256(BASE_RATE) * defaultTerms(PERIODS).discountBps[best] / 10_000;
            }
            honestPremium[id] = premium;
            handler.add(id, signed);
        }
        targetContract(address(handler));
        bytes4[] memory acts = new bytes4[](5);
        acts[0] = HealthRelayHandler.relay.selector;
        acts[1] = HealthRelayHandler.wait.selector;
        acts[2] = HealthRelayHandler.close.selector;
        acts[3] = HealthRelayHandler.withdrawEarnings.selector;
        acts[4] = HealthRelayHandler.pullCredit.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: acts}));
    }

    /// @dev The money in the contract is exactly what it still owes: deposits not refunded nor withdrawn, plus the
    /// credits not pulled (refunds and late discounts that went to credits stay counted in `refunded`).
    function invariant_BalanceIsWhatItOwes() public view {
        uint256 held;
        for (uint256 i = 0; i < handler.idsLength(); ++i) {
            IHealthInsurance.Policy memory p = health.policyOf(handler.ids(i));
            held += p.deposited - p.refunded - p.withdrawn;
        }
        assertEq(token.balanceOf(address(health)), held + health.credited(address(token)));
    }

    /// @dev What the insurer took is covered by what the holder paid and was not given back.
    function invariant_InsurerTakesNoMoreThanTheHolderPaid() public view {
        for (uint256 i = 0; i < handler.idsLength(); ++i) {
            IHealthInsurance.Policy memory p = health.policyOf(handler.ids(i));
            assertLe(p.withdrawn, p.deposited - p.refunded, "the insurer took the holder's money");
        }
    }

    /// @dev Relay independence: whatever this run relayed, closed or withdrew so far, relaying every signed summary
    /// now (after the end) gives each holder exactly the honest premium and net payment.
    function invariant_RelayingTheRestGivesTheHonestOutcome() public {
        uint256 snapshot = vm.snapshotState();
        vm.warp(block.timestamp + 30 weeks);
        bytes memory all;
        for (uint256 i = 0; i < handler.itemsLength(); ++i) {
            all = bytes.concat(all, handler.item(i));
        }
        health.settle(all);
        for (uint256 i = 0; i < handler.idsLength(); ++i) {
            uint256 id = handler.ids(i);
            if (health.policyOf(id).status == IHealthInsurance.PolicyStatus.Active) health.close(id);
            IHealthInsurance.Policy memory p = health.policyOf(id);
            assertEq(p.premium, honestPremium[id], "premium");
            uint256 net = p.premium < deposits[i] ? p.premium : deposits[i];
            assertEq(p.deposited - p.refunded, net, "holder's net payment");
        }
        vm.revertToState(snapshot);
    }

    function afterInvariant() external view {
        assertGt(handler.relays(), 0, "the handler relayed");
    }
}
