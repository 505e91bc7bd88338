// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Hashes} from "@openzeppelin/contracts/utils/cryptography/Hashes.sol";

/// @dev The batch tree of IOptimisticBilling: levels pair (0,1), (2,3), … with the commutative keccak256 and carry
/// an odd last node up unchanged.
library BatchTree {
    function root(bytes32[] memory ls) internal pure returns (bytes32) {
        bytes32[] memory level = _copy(ls);
        uint256 n = level.length;
        while (n > 1) {
            uint256 half = (n + 1) / 2;
            for (uint256 i = 0; i < half; ++i) {
                level[i] = 2 * i + 1 < n ? Hashes.commutativeKeccak256(level[2 * i], level[2 * i + 1]) : level[2 * i];
            }
            n = half;
        }
        return level[0];
    }

    function proof(bytes32[] memory ls, uint256 index) internal pure returns (bytes32[] memory out) {
        bytes32[] memory level = _copy(ls);
        bytes32[] memory path = new bytes32[](64);
        uint256 depth;
        uint256 n = level.length;
        while (n > 1) {
            uint256 sibling = index ^ 1;
            if (sibling < n) path[depth++] = level[sibling];
            uint256 half = (n + 1) / 2;
            for (uint256 i = 0; i < half; ++i) {
                level[i] = 2 * i + 1 < n ? Hashes.commutativeKeccak256(level[2 * i], level[2 * i + 1]) : level[2 * i];
            }
            n = half;
            index /= 2;
        }
        out = new bytes32[](depth);
        for (uint256 i = 0; i < depth; ++i) {
            out[i] = path[i];
        }
    }

    function _copy(bytes32[] memory a) private pure returns (bytes32[] memory b) {
        b = new bytes32[](a.length);
        for (uint256 i = 0; i < a.length; ++i) {
            b[i] = a[i];
        }
    }
}
