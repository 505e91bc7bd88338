// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {console} from "forge-std/console.sol";

import {IDeliveryEscrow} from "../../contracts/interfaces/IDeliveryEscrow.sol";
import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {Fixture} from "./utils/Fixture.sol";

/// @dev Gas per delivery confirmation as a relayer pays it (21,000 base + calldata + execution) for a batch of 100
/// deliveries on 100 funded escrows, each with its own tracker; the storage of every contract is cold before the
/// measured call, as at the start of a real transaction. docs/BENCHMARKS.md explains the floor and the figure.
contract DeliveryEscrowGasTest is Fixture {
    /// @dev The issue's goal per delivery in a batch of 100.
    uint256 internal constant TARGET_PER_DELIVERY = 20_000;
    bytes32 internal constant DESTINATION = bytes32("u4pruydqqvj");

    function _batch(uint256 n, address[] memory sellers)
        internal
        returns (IDeliveryEscrow.SignedDelivery[] memory batch)
    {
        batch = new IDeliveryEscrow.SignedDelivery[](n);
        for (uint256 i = 0; i < n; ++i) {
            uint256 key = deviceKey(5000 + i);
            address device = registerDevice(key, IDeviceRegistry.DeviceKind.Tracker, owner);
            token.mint(buyer, 1e18);
            vm.startPrank(buyer);
            token.approve(address(escrow), 1e18);
            uint256 id = escrow.createEscrow(
                sellers[i % sellers.length],
                device,
                address(token),
                1e18,
                DESTINATION,
                uint64(block.timestamp + 1 days),
                800,
                2_000
            );
            vm.stopPrank();
            batch[i] = signDelivery(key, id, 1, uint64(block.timestamp), DESTINATION, 650);
        }
    }

    /// @dev The packed batch a relayer sends: each delivery followed by its escrow's terms, seller and token left
    /// out when they repeat the previous record's.
    function _pack(IDeliveryEscrow.SignedDelivery[] memory batch) internal view returns (bytes memory data) {
        bytes memory previous;
        for (uint256 i = 0; i < batch.length; ++i) {
            bytes memory terms = escrow.deliveryTerms(batch[i].escrowId);
            data = bytes.concat(data, packDelivery(batch[i], terms, previous));
            previous = terms;
        }
    }

    function _measurePacked(IDeliveryEscrow.SignedDelivery[] memory batch) internal returns (uint256 perItem) {
        bytes memory packed = _pack(batch);
        bytes memory data = abi.encodeCall(escrow.confirmDeliveriesPacked, (packed));
        vm.cool(address(registry));
        vm.cool(address(escrow));
        vm.prank(relayer);
        assertEq(escrow.confirmDeliveriesPacked(packed), batch.length, "every delivery confirms");
        uint256 execution = vm.lastCallGas().gasTotalUsed;
        uint256 txGas = 21_000 + calldataGas(data) + execution;
        perItem = txGas / batch.length;
        console.log("confirmDeliveriesPacked batch", batch.length);
        console.log("  calldata gas per delivery", calldataGas(data) / batch.length);
        console.log("  execution gas per delivery", execution / batch.length);
        console.log("  gas per delivery", perItem);
    }

    function _measure(IDeliveryEscrow.SignedDelivery[] memory batch) internal returns (uint256 perItem) {
        bytes memory data = abi.encodeCall(escrow.confirmDeliveries, (batch));
        vm.cool(address(registry));
        vm.cool(address(escrow));
        vm.prank(relayer);
        assertEq(escrow.confirmDeliveries(batch), batch.length, "every delivery confirms");
        uint256 execution = vm.lastCallGas().gasTotalUsed;
        uint256 txGas = 21_000 + calldataGas(data) + execution;
        perItem = txGas / batch.length;
        console.log("confirmDeliveries batch", batch.length);
        console.log("  calldata gas per delivery", calldataGas(data) / batch.length);
        console.log("  execution gas per delivery", execution / batch.length);
        console.log("  gas per delivery", perItem);
    }

    function _sellers(uint256 n) internal returns (address[] memory sellers) {
        sellers = new address[](n);
        for (uint256 i = 0; i < n; ++i) {
            sellers[i] = makeAddr(string.concat("seller", vm.toString(i)));
        }
    }

    /// @dev One seller (a carrier) for the 100 escrows: the seller's credit slot is cold once per batch.
    function test_GasPerDelivery_Batch100_OneSeller() public {
        uint256 perItem = _measurePacked(_batch(100, _sellers(1)));
        console.log("  target per delivery", TARGET_PER_DELIVERY);
        assertLe(perItem, TARGET_PER_DELIVERY, "gas per delivery in a packed batch of 100");
    }

    /// @dev The ABI struct-array entry point on the same escrows: what a relayer pays without the packed batch.
    function test_GasPerDelivery_Batch100_OneSeller_AbiArray() public {
        _measure(_batch(100, _sellers(1)));
    }

    /// @dev A new seller per escrow: each first credit sets a zero slot (22,100 gas), whatever the escrow does.
    function test_GasPerDelivery_Batch100_NewSellerEach() public {
        _measurePacked(_batch(100, _sellers(100)));
    }
}
