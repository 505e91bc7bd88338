// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IMeteredBilling} from "../../../contracts/interfaces/IMeteredBilling.sol";

/// @dev The packed batch {MeteredBilling.settle} takes (IMeteredBilling.settle documents the layout).
library PackedReadings {
    /// @dev Whether the packed form can carry `rd` (seq and timestamp < 2^40, value < 2^64).
    function packable(IMeteredBilling.SignedReading memory rd) internal pure returns (bool) {
        return rd.seq <= type(uint40).max && rd.timestamp <= type(uint40).max && rd.value <= type(uint64).max;
    }

    function pack(IMeteredBilling.SignedReading[] memory batch) internal pure returns (bytes memory out) {
        for (uint256 i = 0; i < batch.length; ++i) {
            IMeteredBilling.SignedReading memory rd = batch[i];
            require(packable(rd), "reading does not fit the packed form");
            out = bytes.concat(
                out,
                abi.encodePacked(rd.agreementId, uint40(rd.seq), uint40(rd.timestamp), uint64(rd.value), rd.r, rd.vs)
            );
        }
    }
}
