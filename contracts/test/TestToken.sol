// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title TestToken: an ERC-20 ANYONE can mint, for local chains and tests only. Worthless by design.
contract TestToken is ERC20 {
    constructor() ERC20("iotsettle Test Token (worthless)", "TEST") {}

    /// @notice Mint `amount` to `to`. Open to everyone: never deploy this where value matters.
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
