// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {console} from "forge-std/console.sol";

import {IMotorInsurance} from "../../contracts/interfaces/IMotorInsurance.sol";
import {OptimisticMotor} from "../../contracts/OptimisticMotor.sol";
import {BatchTree} from "./utils/BatchTree.sol";
import {MotorFixture} from "./utils/MotorFixture.sol";
import {PackedReports} from "./utils/PackedReports.sol";

/// @dev Gas per telematics report in optimistic mode as relayer and claimer pay it: the commit transaction (21,000 +
/// calldata + execution) shared by the batch's reports, plus one claim transaction per policy per window. Storage is
/// made cold before each measured call, as at the start of a real transaction; calldata priced by EIP-2028.
contract OptimisticMotorGasTest is MotorFixture {
    /// @dev Regression ceiling at 1,000 reports with 100 reports per policy per window (measured ≈ 2,100).
    uint256 internal constant CEILING_PER_REPORT = 2_300;

    OptimisticMotor internal om;
    uint256 internal key = deviceKey(40);
    address internal car;

    function setUp() public override {
        super.setUp();
        om = new OptimisticMotor(registry, 1 hours, 0.1 ether);
        vm.deal(relayer, 1_000 ether);
        car = registerVehicle(key);
    }

    function _cool() internal {
        vm.cool(address(registry));
        vm.cool(address(om));
    }

    function _txGas(bytes memory data) internal view returns (uint256) {
        return 21_000 + calldataGas(data) + vm.lastCallGas().gasTotalUsed;
    }

    function _open() internal returns (uint256 id) {
        vm.prank(insurer);
        id = om.offer(holder, car, address(token), 0.01 ether, 10_000, 30_000, 500, 1_000, 0, 0, 1 days);
        token.mint(holder, 1e24);
        vm.startPrank(holder);
        token.approve(address(om), 1e24);
        om.accept(id, 1e24, 1_000, 0, 0);
        vm.stopPrank();
    }

    /// @dev `n` reports over `policies` policies, committed as one batch, then the newest report of each policy
    /// claimed. Returns the gas per report.
    function _measure(uint256 n, uint256 policies) internal returns (uint256 perReport) {
        bytes[] memory items = _stream(n, policies);
        bytes32[] memory ls = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            ls[i] = om.leafOf(items[i]);
        }
        bytes32 root = BatchTree.root(ls);
        bytes memory data = BatchTree.packReports(items);
        _cool();
        vm.prank(relayer);
        uint256 batchId = om.commit{value: 0.1 ether}(root, data);
        uint256 commitGas = _txGas(abi.encodeCall(om.commit, (root, data)));
        vm.warp(uint256(om.batchOf(batchId).committedAt) + 1 hours + 1);
        uint256 claimGas;
        for (uint256 p = 0; p < policies; ++p) {
            uint256 index = n - policies + p;
            bytes32[] memory proof = BatchTree.proof(ls, index);
            _cool();
            om.claim(batchId, items[index], proof);
            claimGas += _txGas(abi.encodeCall(om.claim, (batchId, items[index], proof)));
        }
        perReport = (commitGas + claimGas) / n;
        console.log("optimistic telematics batch", n);
        console.log("  reports per policy per window", n / policies);
        console.log("  commit gas per report", commitGas / n);
        console.log("  claim gas per report", claimGas / n);
        console.log("  gas per report", perReport);
    }

    /// @dev n / policies reports for each policy, interleaved, the newest last, dated over the hour before the commit.
    function _stream(uint256 n, uint256 policies) internal returns (bytes[] memory items) {
        uint256[] memory ids = new uint256[](policies);
        for (uint256 p = 0; p < policies; ++p) {
            ids[p] = _open();
        }
        vm.warp(block.timestamp + 1 hours);
        items = new bytes[](n);
        for (uint256 i = 0; i < n; ++i) {
            uint256 s = i / policies;
            uint64 time = uint64(block.timestamp - 1 hours + (i * 1 hours) / n);
            uint64 odometer = uint64(1_000 + 250 * (s + 1));
            uint32 harsh = uint32(s / 10);
            uint256 id = ids[i % policies];
            (bytes32 r, bytes32 vs) =
                vm.signCompact(key, om.hashTelematics(id, uint64(s + 1), time, odometer, harsh, 0));
            items[i] = PackedReports.item(
                IMotorInsurance.SignedTelematics(id, uint64(s + 1), time, odometer, harsh, 0, r, vs),
                om.telematicsTerms(id)
            );
        }
    }

    function test_Gas_Batch100_OneReportPerPolicy() public {
        _measure(100, 100);
    }

    function test_Gas_Batch100_HundredReportsPerPolicy() public {
        _measure(100, 1);
    }

    function test_Gas_Batch1000_HundredReportsPerPolicy() public {
        uint256 perReport = _measure(1_000, 10);
        assertLe(perReport, CEILING_PER_REPORT, "no regression");
    }
}
