// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {PullPayments} from "../../../contracts/money/PullPayments.sol";

/// @dev The pull-payment base alone: a test credits ETH to anyone and measures or attacks {withdraw}.
contract LedgerHarness is PullPayments {
    function credit(address account) external payable {
        _credit(address(0), account, msg.value);
    }
}
