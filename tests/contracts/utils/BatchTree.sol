// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Hashes} from "@openzeppelin/contracts/utils/cryptography/Hashes.sol";

/// @dev The batch tree of IOptimisticBilling: levels pair (0,1), (2,3), … with the commutative keccak256 and carry
/// an odd last node up unchanged; and a batch's data from 114-byte readings.
library BatchTree {
    /// @dev The data `commit` takes: the agreement count, the smallest timestamp as the base, the agreement table
    /// (ids in order of first appearance) and each reading as its table index (uint16), seq, timestamp − base
    /// (uint24), value, r and vs.
    function pack(bytes[] memory readings) internal pure returns (bytes memory out) {
        uint256 n = readings.length;
        uint256[] memory table = new uint256[](n);
        uint256[] memory indexOf = new uint256[](n);
        uint256 k;
        uint40 base = type(uint40).max;
        for (uint256 i = 0; i < n; ++i) {
            uint40 time = uint40(bytes5(_slice(readings[i], 37, 5)));
            if (time < base) base = time;
        }
        for (uint256 i = 0; i < n; ++i) {
            uint256 id = uint256(bytes32(readings[i]));
            uint256 index = k;
            for (uint256 j = 0; j < k; ++j) {
                if (table[j] == id) {
                    index = j;
                    break;
                }
            }
            if (index == k) table[k++] = id;
            indexOf[i] = index;
        }
        // One allocation: repeated bytes.concat would copy the batch once per item.
        out = new bytes(7 + 32 * k + 82 * n);
        _put(out, 0, k, 2);
        _put(out, 2, base, 5);
        for (uint256 j = 0; j < k; ++j) {
            _put(out, 7 + 32 * j, table[j], 32);
        }
        for (uint256 i = 0; i < n; ++i) {
            bytes memory reading = readings[i];
            uint256 at = 7 + 32 * k + 82 * i;
            _put(out, at, indexOf[i], 2);
            _copy(out, at + 2, reading, 32, 5); // seq
            _put(out, at + 7, uint40(bytes5(_slice(reading, 37, 5))) - base, 3);
            _copy(out, at + 10, reading, 42, 72); // value, r, vs
        }
    }

    /// @dev The data OptimisticMotor's `commit` takes from 174-byte reports (as `settle` packs them): the policy
    /// count, the smallest timestamp as the base, the policy table and each report as its table index (uint16), seq
    /// (uint40), timestamp − base (uint24), odometer, harshBraking, speeding, r and vs (90 bytes).
    function packReports(bytes[] memory reports) internal pure returns (bytes memory out) {
        uint256 n = reports.length;
        uint256[] memory table = new uint256[](n);
        uint256[] memory indexOf = new uint256[](n);
        uint256 k;
        uint64 base = type(uint64).max;
        for (uint256 i = 0; i < n; ++i) {
            uint64 time = uint64(bytes8(_slice(reports[i], 40, 8)));
            if (time < base) base = time;
        }
        for (uint256 i = 0; i < n; ++i) {
            uint256 id = uint256(bytes32(reports[i]));
            uint256 index = k;
            for (uint256 j = 0; j < k; ++j) {
                if (table[j] == id) {
                    index = j;
                    break;
                }
            }
            if (index == k) table[k++] = id;
            indexOf[i] = index;
        }
        out = new bytes(7 + 32 * k + 90 * n);
        _put(out, 0, k, 2);
        _put(out, 2, base, 5);
        for (uint256 j = 0; j < k; ++j) {
            _put(out, 7 + 32 * j, table[j], 32);
        }
        for (uint256 i = 0; i < n; ++i) {
            bytes memory report = reports[i];
            uint256 at = 7 + 32 * k + 90 * i;
            _put(out, at, indexOf[i], 2);
            _copy(out, at + 2, report, 35, 5); // the low 5 bytes of seq
            _put(out, at + 7, uint64(bytes8(_slice(report, 40, 8))) - base, 3);
            _copy(out, at + 10, report, 48, 80); // odometer, harsh, speeding, r, vs
        }
    }

    /// @dev `value` big-endian into `width` bytes of `out` at `at`.
    function _put(bytes memory out, uint256 at, uint256 value, uint256 width) private pure {
        for (uint256 b = 0; b < width; ++b) {
            out[at + b] = bytes1(uint8(value >> (8 * (width - 1 - b))));
        }
    }

    function _copy(bytes memory out, uint256 at, bytes memory from, uint256 start, uint256 length) private pure {
        for (uint256 b = 0; b < length; ++b) {
            out[at + b] = from[start + b];
        }
    }

    function _slice(bytes memory data, uint256 from, uint256 length) private pure returns (bytes memory out) {
        out = new bytes(length);
        for (uint256 i = 0; i < length; ++i) {
            out[i] = data[from + i];
        }
    }

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
