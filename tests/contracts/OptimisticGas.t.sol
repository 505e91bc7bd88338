// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {console} from "forge-std/console.sol";

import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {OptimisticFixture} from "./utils/OptimisticFixture.sol";

/// @dev Gas per reading in optimistic mode as relayer and claimer pay it: the commit transaction (21,000 + calldata +
/// execution) shared by the batch's readings, plus one claim transaction per agreement per window. Storage is made
/// cold before each measured call, as at the start of a real transaction. Calldata is priced as the contracts' EVM
/// (shanghai, EIP-2028: 16 per non-zero byte, 4 per zero byte).
contract OptimisticGasTest is OptimisticFixture {
    /// @dev The target per reading at 1,000 readings with one claim per agreement per window (100 readings per
    /// agreement): commit share + claim share (docs/OPTIMISTIC.md). The 64 bytes of signature alone cost ~1,020.
    uint256 internal constant CEILING_PER_READING = 2_000;

    uint256 internal key = deviceKey(40);
    address internal meter;
    uint32 internal tariff;

    function setUp() public override {
        super.setUp();
        meter = registerDevice(key, IDeviceRegistry.DeviceKind.Meter, owner);
        tariff = tieredTariff();
    }

    function _cool() internal {
        vm.cool(address(registry));
        vm.cool(address(billing));
        vm.cool(address(opt));
    }

    function _txGas(bytes memory data) internal view returns (uint256) {
        return 21_000 + calldataGas(data) + vm.lastCallGas().gasTotalUsed;
    }

    /// @dev `n` readings over `agreements` agreements (n / agreements readings each), committed as one batch, then
    /// the newest reading of each agreement claimed. Returns the gas per reading.
    function _measure(uint256 n, uint256 agreements) internal returns (uint256 perReading) {
        (bytes[] memory items, uint256[] memory ids) = _stream(n, agreements);
        bytes32[] memory ls = leaves(items);
        (uint256 batchId, uint256 commitGas) = _commit(ls, items);
        afterWindow(batchId);
        uint256 claimGas;
        for (uint256 a = 0; a < agreements; ++a) {
            claimGas += _claim(batchId, ls, items, n - agreements + a);
        }
        assertGt(opt.earningsOf(ids[0]), 0, "the claims billed");
        perReading = (commitGas + claimGas) / n;
        console.log("optimistic batch", n);
        console.log("  readings per agreement per window", n / agreements);
        console.log("  commit gas per reading", commitGas / n);
        console.log("  claim gas per reading", claimGas / n);
        console.log("  gas per reading", perReading);
    }

    function _commit(bytes32[] memory ls, bytes[] memory items) internal returns (uint256 batchId, uint256 gas) {
        bytes32 root = rootOf(ls);
        bytes memory data = pack(items);
        uint256 bond = opt.BOND();
        _cool();
        vm.prank(relayer);
        batchId = opt.commit{value: bond}(root, data);
        gas = _txGas(abi.encodeCall(opt.commit, (root, data)));
    }

    function _claim(uint256 batchId, bytes32[] memory ls, bytes[] memory items, uint256 index)
        internal
        returns (uint256)
    {
        bytes32[] memory proof = proofOf(ls, index);
        _cool();
        opt.claim(batchId, items[index], proof);
        return _txGas(abi.encodeCall(opt.claim, (batchId, items[index], proof)));
    }

    /// @dev n / agreements readings for each of `agreements` agreements, interleaved, the newest last, dated over the
    /// hour before the commit (as a window's readings are: their offsets from the batch's base take 2 bytes).
    function _stream(uint256 n, uint256 agreements) internal returns (bytes[] memory items, uint256[] memory ids) {
        ids = new uint256[](agreements);
        for (uint256 a = 0; a < agreements; ++a) {
            ids[a] = openOptimistic(meter, tariff, 1_000, 1e21);
        }
        vm.warp(block.timestamp + 1 hours);
        items = new bytes[](n);
        for (uint256 i = 0; i < n; ++i) {
            uint256 s = i / agreements;
            uint256 a = i % agreements;
            uint64 time = uint64(block.timestamp - 1 hours + (i * 1 hours) / n);
            items[i] = signItem(key, ids[a], uint64(s + 1), time, uint64(1_000 + 7 * (s + 1) + a));
        }
    }

    function test_Gas_Batch100_OneReadingPerAgreement() public {
        _measure(100, 100);
    }

    function test_Gas_Batch100_TenReadingsPerAgreement() public {
        _measure(100, 10);
    }

    function test_Gas_Batch100_HundredReadingsPerAgreement() public {
        _measure(100, 1);
    }

    function test_Gas_Batch1000_TenReadingsPerAgreement() public {
        _measure(1_000, 100);
    }

    function test_Gas_Batch1000_HundredReadingsPerAgreement() public {
        uint256 perReading = _measure(1_000, 10);
        assertLe(perReading, CEILING_PER_READING, "no regression");
    }

    function test_Gas_Challenge() public {
        uint256 id = openOptimistic(meter, tariff, 1_000, 1e21);
        bytes[] memory items = new bytes[](1_000);
        for (uint256 i = 0; i < items.length; ++i) {
            items[i] = signItem(key, id, uint64(i + 1), uint64(block.timestamp), uint64(1_000 + i));
        }
        items[777] = signItem(deviceKey(41), id, 778, uint64(block.timestamp), 9_999_999);
        bytes32[] memory ls = leaves(items);
        uint256 batchId = commitItems(items);
        bytes32[] memory proof = proofOf(ls, 777);
        _cool();
        opt.challenge(batchId, items[777], proof);
        console.log(
            "challenge tx gas (batch of 1000)", _txGas(abi.encodeCall(opt.challenge, (batchId, items[777], proof)))
        );

        // The data challenge rebuilds the whole tree: the worst case a watcher pays when a root does not match.
        bytes memory data = pack(items);
        uint256 bond = opt.BOND();
        vm.prank(relayer);
        uint256 lying = opt.commit{value: bond}(bytes32(uint256(1)), data);
        _cool();
        opt.challengeData(lying, data);
        console.log("data challenge tx gas (batch of 1000)", _txGas(abi.encodeCall(opt.challengeData, (lying, data))));
    }
}
