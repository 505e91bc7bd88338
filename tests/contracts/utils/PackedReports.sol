// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IMotorInsurance} from "../../../contracts/interfaces/IMotorInsurance.sol";

/// @dev The packed batch {MotorInsurance.settle} takes (IMotorInsurance.settle documents the layout).
library PackedReports {
    function pack(IMotorInsurance.SignedTelematics[] memory batch) internal pure returns (bytes memory out) {
        for (uint256 i = 0; i < batch.length; ++i) {
            IMotorInsurance.SignedTelematics memory t = batch[i];
            out = bytes.concat(
                out, abi.encodePacked(t.policyId, t.seq, t.timestamp, t.odometer, t.harshBraking, t.speeding, t.r, t.vs)
            );
        }
    }
}
