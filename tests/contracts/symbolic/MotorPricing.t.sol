// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "forge-std/Test.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";

import {MotorInsurance} from "../../../contracts/MotorInsurance.sol";
import {IDeviceRegistry} from "../../../contracts/interfaces/IDeviceRegistry.sol";

/// @dev Exposes the one pricing function of MotorInsurance, `_price`, as floor(F(metres, events)) of a policy's
/// terms: the totals of a policy that started at zero (its terms word holds only the factor terms).
contract MotorPricingHarness is MotorInsurance {
    constructor() MotorInsurance(IDeviceRegistry(address(0xdead))) {}

    function cumulativePremium(uint256 metres, uint256 events, uint256 rate, uint256 minF, uint256 maxF, uint256 step)
        external
        pure
        returns (uint256 owed)
    {
        uint256 terms = uint16(minF) | (uint256(uint16(maxF)) << 16) | (uint256(uint16(step)) << 32);
        (,, owed) = _price(terms, rate, 0, 0, metres, events);
    }
}

/// @dev Path independence of the motor premium, stated for every value of the stored widths (metres < 2^64, each
/// event counter < 2^32, ratePerKm < 2^128, 0 < minFactorBps ≤ maxFactorBps ≤ 50_000, stepBps < 2^16).
///
/// Each property is written once (`_prop…`, with `vm.assume` for its preconditions) and run two ways:
/// - `testFuzz_…` (forge, default suite): random terms of every width, inputs brought into the preconditions with
///   `bound`;
/// - `check_…` (halmos: `SYMBOLIC_CONTRACTS=MotorPricingSymbolicTest scripts/symbolic`): for every distance and
///   event count, under each term set of {_termsOf}. halmos 0.3.3 with yices times out on them today (e.g.
///   `check_PremiumIsMonotone`: 25 paths, 150 s, TIMEOUT at 30 s per query): the premium divides a product of
///   unknowns by 10^7, which bit-blasted 256-bit division does not survive. They stay here, ready for a stronger
///   solver; until then the fuzz twins and the adversarial-relayer invariants carry these properties.
contract MotorPricingSymbolicTest is Test {
    MotorPricingHarness internal pricing;

    uint256 internal constant MAX_EVENTS = 2 * uint256(type(uint32).max);

    function setUp() public {
        pricing = new MotorPricingHarness();
    }

    function _terms(uint128 rate, uint16 minF, uint16 maxF) internal pure {
        vm.assume(rate > 0);
        vm.assume(minF > 0 && minF <= maxF && maxF <= 50_000);
    }

    function _f(uint256 metres, uint256 events, uint128 rate, uint16 minF, uint16 maxF, uint16 step)
        internal
        view
        returns (uint256)
    {
        return pricing.cumulativePremium(metres, events, rate, minF, maxF, step);
    }

    // ---------------------------------------------------------------- properties

    /// @dev F is floor(rate × min(M × min + E × step × 100_000, M × max) / 10^7), computed in 512 bits here: the
    /// contract's unchecked 256-bit arithmetic cannot overflow within the widths.
    function _propPremiumIsTheFormulaWithoutOverflow(
        uint64 metres,
        uint64 events,
        uint128 rate,
        uint16 minF,
        uint16 maxF,
        uint16 step
    ) internal view {
        _terms(rate, minF, maxF);
        vm.assume(events <= MAX_EVENTS);
        uint256 weighted = uint256(metres) * minF + uint256(events) * step * 100_000;
        uint256 cap = uint256(metres) * maxF;
        if (weighted > cap) weighted = cap;
        assertEq(_f(metres, events, rate, minF, maxF, step), Math.mulDiv(weighted, rate, 10_000_000));
    }

    /// @dev More distance or more events never lower the premium, so no report's charge is negative.
    function _propPremiumIsMonotone(
        uint64 m1,
        uint64 e1,
        uint64 m2,
        uint64 e2,
        uint128 rate,
        uint16 minF,
        uint16 maxF,
        uint16 step
    ) internal view {
        _terms(rate, minF, maxF);
        vm.assume(m1 <= m2 && e1 <= e2 && e2 <= MAX_EVENTS);
        assertLe(_f(m1, e1, rate, minF, maxF, step), _f(m2, e2, rate, minF, maxF, step));
    }

    /// @dev Settling an intermediate report (totals M1, E1) and then the newest (M2, E2) charges exactly what
    /// settling the newest alone charges, starting from any earlier settled totals (M0, E0).
    function _propIntermediateReportChangesNothing(
        uint64 m0,
        uint64 e0,
        uint64 m1,
        uint64 e1,
        uint64 m2,
        uint64 e2,
        uint128 rate,
        uint16 minF,
        uint16 maxF,
        uint16 step
    ) internal view {
        _terms(rate, minF, maxF);
        vm.assume(m0 <= m1 && m1 <= m2 && e0 <= e1 && e1 <= e2 && e2 <= MAX_EVENTS);
        uint256 f0 = _f(m0, e0, rate, minF, maxF, step);
        uint256 f1 = _f(m1, e1, rate, minF, maxF, step);
        uint256 f2 = _f(m2, e2, rate, minF, maxF, step);
        // Both charges of the two-report path exist (no underflow) and add up to the one-report charge.
        assertLe(f0, f1, "first charge >= 0");
        assertLe(f1, f2, "second charge >= 0");
        assertEq((f1 - f0) + (f2 - f1), f2 - f0, "two reports cost what the newest alone costs");
    }

    /// @dev The premium lies between the clean price (factor min) and the capped price (factor max) of the distance.
    function _propPremiumBetweenTheFactorBounds(
        uint64 metres,
        uint64 events,
        uint128 rate,
        uint16 minF,
        uint16 maxF,
        uint16 step
    ) internal view {
        _terms(rate, minF, maxF);
        vm.assume(events <= MAX_EVENTS);
        uint256 f = _f(metres, events, rate, minF, maxF, step);
        assertGe(f, Math.mulDiv(uint256(metres) * minF, rate, 10_000_000), "at least the clean price");
        assertLe(f, Math.mulDiv(uint256(metres) * maxF, rate, 10_000_000), "at most the capped price");
        if (events == 0 || step == 0) {
            assertEq(f, Math.mulDiv(uint256(metres) * minF, rate, 10_000_000), "clean driving pays the minimum");
        }
    }

    // ---------------------------------------------------------------- the same properties under forge

    function _fuzzTerms(uint128 rate, uint16 minF, uint16 maxF) internal pure returns (uint128, uint16, uint16) {
        maxF = uint16(bound(maxF, 1, 50_000));
        return (uint128(bound(rate, 1, type(uint128).max)), uint16(bound(minF, 1, maxF)), maxF);
    }

    function testFuzz_PremiumIsTheFormulaWithoutOverflow(
        uint64 metres,
        uint64 events,
        uint128 rate,
        uint16 minF,
        uint16 maxF,
        uint16 step
    ) public view {
        (rate, minF, maxF) = _fuzzTerms(rate, minF, maxF);
        events = uint64(bound(events, 0, MAX_EVENTS));
        _propPremiumIsTheFormulaWithoutOverflow(metres, events, rate, minF, maxF, step);
    }

    function testFuzz_PremiumIsMonotone(
        uint64 m1,
        uint64 e1,
        uint64 m2,
        uint64 e2,
        uint128 rate,
        uint16 minF,
        uint16 maxF,
        uint16 step
    ) public view {
        (rate, minF, maxF) = _fuzzTerms(rate, minF, maxF);
        e2 = uint64(bound(e2, 0, MAX_EVENTS));
        m1 = uint64(bound(m1, 0, m2));
        e1 = uint64(bound(e1, 0, e2));
        _propPremiumIsMonotone(m1, e1, m2, e2, rate, minF, maxF, step);
    }

    function testFuzz_IntermediateReportChangesNothing(
        uint64[3] memory m,
        uint64[3] memory e,
        uint128 rate,
        uint16 minF,
        uint16 maxF,
        uint16 step
    ) public view {
        (rate, minF, maxF) = _fuzzTerms(rate, minF, maxF);
        e[2] = uint64(bound(e[2], 0, MAX_EVENTS));
        m[1] = uint64(bound(m[1], 0, m[2]));
        e[1] = uint64(bound(e[1], 0, e[2]));
        m[0] = uint64(bound(m[0], 0, m[1]));
        e[0] = uint64(bound(e[0], 0, e[1]));
        _propIntermediateReportChangesNothing(m[0], e[0], m[1], e[1], m[2], e[2], rate, minF, maxF, step);
    }

    function testFuzz_PremiumBetweenTheFactorBounds(
        uint64 metres,
        uint64 events,
        uint128 rate,
        uint16 minF,
        uint16 maxF,
        uint16 step
    ) public view {
        (rate, minF, maxF) = _fuzzTerms(rate, minF, maxF);
        events = uint64(bound(events, 0, MAX_EVENTS));
        _propPremiumBetweenTheFactorBounds(metres, events, rate, minF, maxF, step);
    }

    // ---------------------------------------------------------------- the same properties, proved by halmos

    /// @dev Three policies: flat (1 base unit per km, no behaviour weight), the demo's (0.10 TEST per km, ×0.80 …
    /// ×2.00, +0.10 per event per 100 km) and extreme (every width at its maximum).
    function _termsOf(uint8 which) internal pure returns (uint128 rate, uint16 minF, uint16 maxF, uint16 step) {
        if (which == 0) return (1, 10_000, 10_000, 0);
        if (which == 1) return (1e17, 8_000, 20_000, 1_000);
        return (type(uint128).max, 1, 50_000, type(uint16).max);
    }

    function check_PremiumIsTheFormulaWithoutOverflow(uint8 which, uint64 metres, uint64 events) public view {
        (uint128 rate, uint16 minF, uint16 maxF, uint16 step) = _termsOf(which);
        vm.assume(events <= MAX_EVENTS);
        _propPremiumIsTheFormulaWithoutOverflow(metres, events, rate, minF, maxF, step);
    }

    function check_PremiumIsMonotone(uint8 which, uint64 m1, uint64 e1, uint64 m2, uint64 e2) public view {
        (uint128 rate, uint16 minF, uint16 maxF, uint16 step) = _termsOf(which);
        _propPremiumIsMonotone(m1, e1, m2, e2, rate, minF, maxF, step);
    }

    function check_IntermediateReportChangesNothing(
        uint8 which,
        uint64 m0,
        uint64 e0,
        uint64 m1,
        uint64 e1,
        uint64 m2,
        uint64 e2
    ) public view {
        (uint128 rate, uint16 minF, uint16 maxF, uint16 step) = _termsOf(which);
        _propIntermediateReportChangesNothing(m0, e0, m1, e1, m2, e2, rate, minF, maxF, step);
    }

    function check_PremiumBetweenTheFactorBounds(uint8 which, uint64 metres, uint64 events) public view {
        (uint128 rate, uint16 minF, uint16 maxF, uint16 step) = _termsOf(which);
        _propPremiumBetweenTheFactorBounds(metres, events, rate, minF, maxF, step);
    }
}
