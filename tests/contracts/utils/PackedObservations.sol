// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ICropInsurance} from "../../../contracts/interfaces/ICropInsurance.sol";

/// @dev The packed batch {CropInsurance.record} takes (ICropInsurance.record documents the layout).
library PackedObservations {
    function pack(ICropInsurance.SignedObservation[] memory batch) internal pure returns (bytes memory out) {
        for (uint256 i = 0; i < batch.length; ++i) {
            ICropInsurance.SignedObservation memory o = batch[i];
            out = bytes.concat(
                out, abi.encodePacked(o.station, o.seq, o.timestamp, o.rainfall, o.maxTemperature, o.r, o.vs)
            );
        }
    }
}
