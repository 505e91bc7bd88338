// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IMotorInsurance} from "../../../contracts/interfaces/IMotorInsurance.sol";

/// @dev The packed batch {MotorInsurance.settle} takes (IMotorInsurance.settle documents the layout).
library PackedReports {
    /// @dev Each report with its policy's terms as {IMotorInsurance.telematicsTerms} returns them (the relayer's usual
    /// batch); a policy the contract does not know gets zero terms.
    function pack(IMotorInsurance motor, IMotorInsurance.SignedTelematics[] memory batch)
        internal
        view
        returns (bytes memory out)
    {
        for (uint256 i = 0; i < batch.length; ++i) {
            bytes memory terms = new bytes(46);
            try motor.telematicsTerms(batch[i].policyId) returns (bytes memory t) {
                terms = t;
            } catch {}
            out = bytes.concat(out, item(batch[i], terms));
        }
    }

    /// @dev Every report with the same `terms` (46 bytes; zeros: the contract reads the terms itself).
    function pack(IMotorInsurance.SignedTelematics[] memory batch, bytes memory terms)
        internal
        pure
        returns (bytes memory out)
    {
        for (uint256 i = 0; i < batch.length; ++i) {
            out = bytes.concat(out, item(batch[i], terms));
        }
    }

    function item(IMotorInsurance.SignedTelematics memory t, bytes memory terms) internal pure returns (bytes memory) {
        require(terms.length == 46, "terms are 46 bytes");
        return abi.encodePacked(
            t.policyId, t.seq, t.timestamp, t.odometer, t.harshBraking, t.speeding, t.r, t.vs, terms
        );
    }

    /// @dev The `record` word of {IMotorInsurance.PremiumCharged}.
    function record(uint64 seq, uint64 metres, uint32 harshBraking, uint32 speeding, uint16 factorBps)
        internal
        pure
        returns (uint256)
    {
        return (uint256(seq) << 192) | (uint256(metres) << 128) | (uint256(harshBraking) << 96)
            | (uint256(speeding) << 64) | (uint256(factorBps) << 48);
    }
}
