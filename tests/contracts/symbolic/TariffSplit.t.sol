// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "forge-std/Test.sol";

import {DeviceRegistry} from "../../../contracts/DeviceRegistry.sol";
import {MeteredBilling} from "../../../contracts/MeteredBilling.sol";
import {IMeteredBilling} from "../../../contracts/interfaces/IMeteredBilling.sol";

/// @title The cost of consumption does not depend on where it is split.
/// @notice A cumulative register settled at any intermediate reading must bill exactly what settling only the
/// newest one bills: cost(a → c) = cost(a → b) + cost(b → c) for every a ≤ b ≤ c, over a tiered tariff. The
/// `check_` functions are proved for every input by `scripts/symbolic` (halmos); the `testFuzz_` wrappers run the
/// same property under forge's fuzzer in the default suite.
contract TariffSplitTest is Test {
    MeteredBilling internal billing;
    uint32 internal flat;
    uint32 internal tiered;

    function setUp() public {
        billing = new MeteredBilling(new DeviceRegistry());
        IMeteredBilling.TariffBlock[] memory one = new IMeteredBilling.TariffBlock[](1);
        one[0] = IMeteredBilling.TariffBlock({units: 0, price: 7});
        flat = billing.createTariff(one);
        IMeteredBilling.TariffBlock[] memory three = new IMeteredBilling.TariffBlock[](3);
        three[0] = IMeteredBilling.TariffBlock({units: 100, price: 3});
        three[1] = IMeteredBilling.TariffBlock({units: 250, price: 5});
        three[2] = IMeteredBilling.TariffBlock({units: 0, price: 11});
        tiered = billing.createTariff(three);
    }

    /// @dev Split anywhere inside the consumption interval of a tiered tariff.
    function check_TieredCostIsSplitIndependent(uint64 a, uint64 b, uint64 c) public view {
        vm.assume(a <= b && b <= c);
        assertEq(
            billing.costOf(tiered, a, c), billing.costOf(tiered, a, b) + billing.costOf(tiered, b, c), "split changes cost"
        );
    }

    /// @dev The same for a flat tariff, and the flat cost is exactly units × price.
    function check_FlatCostIsLinear(uint64 a, uint64 b, uint64 c) public view {
        vm.assume(a <= b && b <= c);
        assertEq(billing.costOf(flat, a, c), uint256(c - a) * 7, "flat cost");
        assertEq(billing.costOf(flat, a, c), billing.costOf(flat, a, b) + billing.costOf(flat, b, c), "split");
    }

    function testFuzz_TieredCostIsSplitIndependent(uint64 a, uint64 b, uint64 c) public view {
        a = uint64(bound(a, 0, 1_000));
        b = uint64(bound(b, a, 1_000));
        c = uint64(bound(c, b, type(uint64).max));
        check_TieredCostIsSplitIndependent(a, b, c);
    }

    function testFuzz_FlatCostIsLinear(uint64 a, uint64 b, uint64 c) public view {
        b = uint64(bound(b, a, type(uint64).max));
        c = uint64(bound(c, b, type(uint64).max));
        check_FlatCostIsLinear(a, b, c);
    }
}
