// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "forge-std/Test.sol";

import {DeliveryEscrow} from "../../../contracts/DeliveryEscrow.sol";
import {DeviceRegistry} from "../../../contracts/DeviceRegistry.sol";
import {MeteredBilling} from "../../../contracts/MeteredBilling.sol";
import {IDeliveryEscrow} from "../../../contracts/interfaces/IDeliveryEscrow.sol";
import {IDeviceRegistry} from "../../../contracts/interfaces/IDeviceRegistry.sol";
import {IMeteredBilling} from "../../../contracts/interfaces/IMeteredBilling.sol";
import {TestToken} from "../../../contracts/test/TestToken.sol";
import {PackedReadings} from "./PackedReadings.sol";

/// @dev Deploys the three contracts in the production order and signs device events with forge keys.
abstract contract Fixture is Test {
    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    DeviceRegistry internal registry;
    DeliveryEscrow internal escrow;
    MeteredBilling internal billing;
    TestToken internal token;

    address internal owner = makeAddr("owner");
    address internal provider = makeAddr("provider");
    address internal consumer = makeAddr("consumer");
    address internal buyer = makeAddr("buyer");
    address internal seller = makeAddr("seller");
    address internal relayer = makeAddr("relayer");

    function setUp() public virtual {
        vm.warp(1_764_340_000);
        registry = new DeviceRegistry();
        escrow = new DeliveryEscrow(registry);
        billing = new MeteredBilling(registry);
        token = new TestToken();
    }

    // ---------------------------------------------------------------- signing helpers

    function deviceKey(uint256 index) internal pure returns (uint256) {
        return uint256(keccak256(abi.encode("iotsettle device", index))) % (SECP256K1_N - 1) + 1;
    }

    function sign65(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    function registerDevice(uint256 key, IDeviceRegistry.DeviceKind kind, address deviceOwner)
        internal
        returns (address device)
    {
        device = vm.addr(key);
        uint64 deadline = uint64(block.timestamp + 1 hours);
        bytes32 digest = registry.hashRegistration(device, deviceOwner, kind, bytes32(uint256(1)), deadline);
        vm.prank(deviceOwner);
        registry.register(device, kind, bytes32(uint256(1)), deadline, sign65(key, digest));
    }

    function rotate(address device, uint256 newKey, address deviceOwner) internal {
        address newAddr = vm.addr(newKey);
        uint64 deadline = uint64(block.timestamp + 1 hours);
        bytes32 digest = registry.hashKeyRotation(device, newAddr, deadline);
        vm.prank(deviceOwner);
        registry.rotateKey(device, newAddr, deadline, sign65(newKey, digest));
    }

    function signReading(uint256 key, uint256 agreementId, uint64 seq, uint64 timestamp, uint256 value)
        internal
        view
        returns (IMeteredBilling.SignedReading memory rd)
    {
        bytes32 digest = billing.hashReading(agreementId, seq, timestamp, value);
        (bytes32 r, bytes32 vs) = vm.signCompact(key, digest);
        rd = IMeteredBilling.SignedReading(agreementId, seq, timestamp, value, r, vs);
    }

    function signDelivery(
        uint256 key,
        uint256 escrowId,
        uint64 seq,
        uint64 timestamp,
        bytes32 location,
        int32 maxTemperature
    ) internal view returns (IDeliveryEscrow.SignedDelivery memory d) {
        bytes32 digest = escrow.hashDelivery(escrowId, seq, timestamp, location, maxTemperature);
        (bytes32 r, bytes32 vs) = vm.signCompact(key, digest);
        d = IDeliveryEscrow.SignedDelivery(escrowId, seq, timestamp, location, maxTemperature, r, vs);
    }

    /// @dev One record of DeliveryEscrow.confirmDeliveriesPacked: the delivery packed, then the escrow's terms,
    /// without seller and token (and with the SAME_PARTY bit) when they are those of `previous` terms.
    function packDelivery(IDeliveryEscrow.SignedDelivery memory d, bytes memory terms, bytes memory previous)
        internal
        pure
        returns (bytes memory)
    {
        bool same =
            previous.length == 98 && keccak256(_slice(terms, 0, 40)) == keccak256(_slice(previous, 0, 40));
        uint64 head = uint64(d.escrowId) | (same ? uint64(1 << 63) : 0);
        return abi.encodePacked(
            head, d.seq, d.timestamp, d.location, d.maxTemperature, d.r, d.vs, same ? _slice(terms, 40, 98) : terms
        );
    }

    function _slice(bytes memory b, uint256 from, uint256 to) private pure returns (bytes memory out) {
        out = new bytes(to - from);
        for (uint256 i = from; i < to; ++i) {
            out[i - from] = b[i];
        }
    }

    function packReadings(IMeteredBilling.SignedReading[] memory batch) internal pure returns (bytes memory) {
        return PackedReadings.pack(batch);
    }

    /// @dev One record of a {IMeteredBilling.ReadingsSettled} log: agreementId 32 | seq 5 | amount 12.
    function settledRecord(uint256 agreementId, uint64 seq, uint256 amount) internal pure returns (bytes memory) {
        return abi.encodePacked(agreementId, uint40(seq), uint96(amount));
    }

    function packable(IMeteredBilling.SignedReading memory rd) internal pure returns (bool) {
        return PackedReadings.packable(rd);
    }

    function oneReading(IMeteredBilling.SignedReading memory rd) internal pure returns (bytes memory) {
        IMeteredBilling.SignedReading[] memory batch = new IMeteredBilling.SignedReading[](1);
        batch[0] = rd;
        return packReadings(batch);
    }

    function oneDelivery(IDeliveryEscrow.SignedDelivery memory d)
        internal
        pure
        returns (IDeliveryEscrow.SignedDelivery[] memory batch)
    {
        batch = new IDeliveryEscrow.SignedDelivery[](1);
        batch[0] = d;
    }

    /// @dev The same signature with s mirrored to the upper half of the curve order (and v flipped): still
    /// valid for ecrecover, but malleable.
    function highS(bytes memory sig) internal pure returns (bytes memory) {
        (bytes32 r, bytes32 s, uint8 v) = split(sig);
        return abi.encodePacked(r, bytes32(SECP256K1_N - uint256(s)), v == 27 ? uint8(28) : uint8(27));
    }

    function split(bytes memory sig) internal pure returns (bytes32 r, bytes32 s, uint8 v) {
        assembly ("memory-safe") {
            r := mload(add(sig, 0x20))
            s := mload(add(sig, 0x40))
            v := byte(0, mload(add(sig, 0x60)))
        }
    }

    /// @dev An EIP-712 digest under an arbitrary domain, to show that any other domain is refused.
    function digestUnder(string memory name, string memory version, uint256 chainId, address verifying, bytes32 sh)
        internal
        pure
        returns (bytes32)
    {
        bytes32 domainSeparator = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256(bytes(name)),
                keccak256(bytes(version)),
                chainId,
                verifying
            )
        );
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator, sh));
    }

    // ---------------------------------------------------------------- product helpers

    function flatTariff(uint128 price) internal returns (uint32) {
        IMeteredBilling.TariffBlock[] memory blocks = new IMeteredBilling.TariffBlock[](1);
        blocks[0] = IMeteredBilling.TariffBlock(0, price);
        return billing.createTariff(blocks);
    }

    /// @dev Offer + accept with a token deposit; returns the agreement id.
    function openAgreement(address device, uint32 tariffId, uint64 startValue, uint256 deposit)
        internal
        returns (uint256 id)
    {
        vm.prank(provider);
        id = billing.offer(consumer, device, tariffId, address(token), startValue, 1 days);
        token.mint(consumer, deposit);
        vm.startPrank(consumer);
        token.approve(address(billing), deposit);
        billing.accept(id, deposit, startValue);
        vm.stopPrank();
    }

    /// @dev Cost of calldata as the transaction pays it (EIP-2028: 16 per non-zero byte, 4 per zero byte).
    function calldataGas(bytes memory data) internal pure returns (uint256 gas) {
        for (uint256 i = 0; i < data.length; ++i) {
            gas += data[i] == 0 ? 4 : 16;
        }
    }
}
