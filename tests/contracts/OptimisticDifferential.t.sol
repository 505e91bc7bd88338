// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {IMeteredBilling} from "../../contracts/interfaces/IMeteredBilling.sol";
import {OptimisticFixture} from "./utils/OptimisticFixture.sol";

/// @dev "The relayer chooses nothing": whatever subset of a meter's signed readings an adversary commits, however
/// it splits and orders them into batches, and whichever leaves a claimer tries in whatever order, the money billed
/// in optimistic mode equals direct settlement (MeteredBilling) of the same readings.
contract OptimisticDifferentialTest is OptimisticFixture {
    uint256 internal key = deviceKey(30);
    address internal meter;
    uint32 internal tariff;
    uint64 internal constant START = 1_000;

    function setUp() public override {
        super.setUp();
        meter = registerDevice(key, IDeviceRegistry.DeviceKind.Meter, owner);
        tariff = tieredTariff();
    }

    function _rand(uint256 seed, uint256 salt) internal pure returns (uint256) {
        return uint256(keccak256(abi.encode(seed, salt)));
    }

    struct Run {
        uint256 seed;
        uint256 n;
        uint256 k;
        uint64 base;
        uint256 direct;
        uint256 optimistic;
        uint64[] values;
        uint256[] kept;
        bytes[][] parts;
        uint256[] ids;
    }

    function testFuzz_Claims_PayWhatDirectSettlementPays(uint256 seed, uint256 deposit, uint8 count) public {
        deposit = bound(deposit, 1, 15_000);
        Run memory run;
        run.seed = seed;
        run.n = bound(count, 1, 12);
        run.direct = openAgreement(meter, tariff, START, deposit);
        run.optimistic = openOptimistic(meter, tariff, START, deposit);
        run.base = uint64(block.timestamp);

        // The device's stream: seq 1..n, the register never going back, time moving on.
        run.values = new uint64[](run.n);
        uint64 value = START;
        for (uint256 i = 0; i < run.n; ++i) {
            value += uint64(_rand(seed, i) % 200);
            run.values[i] = value;
        }
        _relayAdversarially(run);
        _claimAdversarially(run);
        _settleDirectly(run);

        IMeteredBilling.Agreement memory d = billing.agreementOf(run.direct);
        IMeteredBilling.Agreement memory o = opt.agreementOf(run.optimistic);
        assertEq(opt.earningsOf(run.optimistic), billing.earningsOf(run.direct), "the same money billed");
        assertEq(o.prepaid, d.prepaid, "the same prepaid rest");
        assertLe(opt.earningsOf(run.optimistic), deposit, "billed <= deposited");
        if (d.status == IMeteredBilling.AgreementStatus.Active) {
            assertEq(uint8(o.status), uint8(IMeteredBilling.AgreementStatus.Active));
            assertEq(o.lastValue, d.lastValue, "the same register");
            assertEq(o.lastSeq, d.lastSeq, "the same last reading");
            assertEq(o.arrears, 0);
        } else {
            assertEq(o.prepaid, 0, "both ran the deposit out");
        }
    }

    /// @dev The adversary keeps a subset, shuffles it, cuts it into up to four batches and commits them apart.
    function _relayAdversarially(Run memory run) internal {
        uint256 seed = run.seed;
        run.kept = new uint256[](run.n);
        for (uint256 i = 0; i < run.n; ++i) {
            if (_rand(seed, 100 + i) % 3 != 0) run.kept[run.k++] = i;
        }
        uint256 k = run.k;
        for (uint256 i = k; i > 1; --i) {
            uint256 j = _rand(seed, 200 + i) % i;
            (run.kept[i - 1], run.kept[j]) = (run.kept[j], run.kept[i - 1]);
        }
        uint256 batches = k == 0 ? 0 : 1 + _rand(seed, 300) % (k < 4 ? k : 4);
        run.parts = new bytes[][](batches);
        run.ids = new uint256[](batches);
        uint256 at;
        for (uint256 b = 0; b < batches; ++b) {
            uint256 size = b + 1 == batches ? k - at : 1 + _rand(seed, 400 + b) % (k - at - (batches - b - 1));
            run.parts[b] = new bytes[](size);
            for (uint256 s = 0; s < size; ++s) {
                uint256 i = run.kept[at + s];
                run.parts[b][s] = signItem(key, run.optimistic, uint64(i + 1), run.base + uint64(i) * 10, run.values[i]);
            }
            at += size;
        }
        vm.warp(run.base + 10 * run.n);
        for (uint256 b = 0; b < batches; ++b) {
            run.ids[b] = commitItems(run.parts[b]);
            vm.warp(block.timestamp + _rand(seed, 500 + b) % 20 minutes);
        }
        vm.warp(block.timestamp + opt.CHALLENGE_WINDOW() + 1);
    }

    function _claimAdversarially(Run memory run) internal {
        uint256 batches = run.parts.length;
        // A claimer tries random leaves in random order (claims behind the last one are refused)...
        for (uint256 t = 0; t < 2 * run.k; ++t) {
            uint256 b = _rand(run.seed, 600 + t) % batches;
            uint256 s = _rand(run.seed, 700 + t) % run.parts[b].length;
            bytes32[] memory proof = proofOf(leaves(run.parts[b]), s);
            try opt.claim(run.ids[b], run.parts[b][s], proof) {} catch {}
        }
        // ...then the provider claims each batch's newest leaf: one proof per agreement per window.
        for (uint256 b = 0; b < batches; ++b) {
            uint256 newest;
            uint256 newestSeq;
            for (uint256 s = 0; s < run.parts[b].length; ++s) {
                (, uint256 seq,,) = fieldsOf(run.parts[b][s]);
                if (seq > newestSeq) (newest, newestSeq) = (s, seq);
            }
            bytes32[] memory proof = proofOf(leaves(run.parts[b]), newest);
            try opt.claim(run.ids[b], run.parts[b][newest], proof) {} catch {}
        }
    }

    /// @dev Direct settlement of the same readings, in the device's order.
    function _settleDirectly(Run memory run) internal {
        for (uint256 i = 0; i < run.n; ++i) {
            bool wasKept;
            for (uint256 j = 0; j < run.k; ++j) {
                if (run.kept[j] == i) wasKept = true;
            }
            if (!wasKept) continue;
            vm.prank(relayer);
            billing.settle(
                oneReading(signReading(key, run.direct, uint64(i + 1), run.base + uint64(i) * 10, run.values[i]))
            );
        }
    }
}
