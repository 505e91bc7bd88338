// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IDeviceEvents} from "../../contracts/interfaces/IDeviceEvents.sol";
import {IDeviceRegistry} from "../../contracts/interfaces/IDeviceRegistry.sol";
import {IMeteredBilling} from "../../contracts/interfaces/IMeteredBilling.sol";
import {Fixture} from "./utils/Fixture.sol";

/// @dev docs/RELIABILITY.md item 3, the part the product tests leave out: a reading signed under another EIP-712
/// type string (renamed field, other field type, other order, other primary type name) is refused and pays
/// nothing, even though the domain is right. The signature then recovers to a key nobody registered.
contract ReliabilityDomainTest is Fixture {
    uint256 internal meterKey = deviceKey(31);
    address internal meter;
    uint256 internal id;
    uint64 internal constant START = 100;

    function setUp() public override {
        super.setUp();
        meter = registerDevice(meterKey, IDeviceRegistry.DeviceKind.Meter, owner);
        id = openAgreement(meter, flatTariff(3), START, 1_000);
    }

    function _typeString(uint8 which) internal pure returns (bytes memory) {
        if (which == 0) return "Reading(uint256 agreementId,uint64 seq,uint64 timestamp,uint256 amount)";
        if (which == 1) return "Reading(uint256 agreementId,uint256 seq,uint64 timestamp,uint256 value)";
        if (which == 2) return "Reading(uint256 agreementId,uint64 timestamp,uint64 seq,uint256 value)";
        if (which == 3) return "MeterReading(uint256 agreementId,uint64 seq,uint64 timestamp,uint256 value)";
        return "Reading(uint256 agreementId,uint64 seq,uint64 timestamp,uint256 value) ";
    }

    function testFuzz_Reject_OtherTypeString(uint8 which, uint64 seq, uint32 rise) public {
        which = uint8(bound(which, 0, 4));
        seq = uint64(bound(seq, 1, type(uint32).max)); // within the stored width (ValueOutOfRange is checked first)
        uint256 value = START + uint256(rise);
        uint64 ts = uint64(block.timestamp);
        bytes32 sh = keccak256(abi.encode(keccak256(_typeString(which)), id, seq, ts, value));
        bytes32 digest = digestUnder("iotsettle", "1", block.chainid, address(billing), sh);
        assertTrue(digest != billing.hashReading(id, seq, ts, value), "another type string, another digest");
        (bytes32 r, bytes32 vs) = vm.signCompact(meterKey, digest);
        IMeteredBilling.SignedReading memory rd = IMeteredBilling.SignedReading(id, seq, ts, value, r, vs);

        IMeteredBilling.Agreement memory before = billing.agreementOf(id);
        vm.expectEmit(address(billing));
        emit IMeteredBilling.ReadingRejected(id, seq, IDeviceEvents.RejectReason.UnknownKey);
        vm.prank(relayer);
        assertEq(billing.settle(oneReading(rd)), 0, "nothing settled");
        assertEq(keccak256(abi.encode(billing.agreementOf(id))), keccak256(abi.encode(before)), "no state change");
        assertEq(billing.earningsOf(id), 0, "nothing paid");

        vm.expectRevert(
            abi.encodeWithSelector(IDeviceEvents.EventRejected.selector, id, seq, IDeviceEvents.RejectReason.UnknownKey)
        );
        billing.settleReading(rd);
    }
}
