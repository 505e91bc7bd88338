// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @dev Test-only hostile counterparts: tokens and payees that lie, revert or re-enter.

/// @dev Returns false from transfer/transferFrom without moving anything once `lying` is set.
contract FalseReturningToken is ERC20 {
    bool public lying;

    constructor() ERC20("False", "FALSE") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function setLying(bool on) external {
        lying = on;
    }

    function transfer(address to, uint256 amount) public override returns (bool) {
        if (lying) return false;
        return super.transfer(to, amount);
    }

    function transferFrom(address from, address to, uint256 amount) public override returns (bool) {
        if (lying) return false;
        return super.transferFrom(from, to, amount);
    }
}

/// @dev Keeps 1% of every transfer: the receiver gets less than it was told.
contract FeeOnTransferToken is ERC20 {
    constructor() ERC20("Fee", "FEE") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function _update(address from, address to, uint256 amount) internal override {
        if (from != address(0) && to != address(0)) {
            uint256 fee = amount / 100;
            super._update(from, address(0xfee), fee);
            amount -= fee;
        }
        super._update(from, to, amount);
    }
}

/// @dev Reverts every transfer once `broken` is set (a paused or blacklisting token).
contract RevertingToken is ERC20 {
    bool public broken;

    error TokenBroken();

    constructor() ERC20("Revert", "REV") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function setBroken(bool on) external {
        broken = on;
    }

    function _update(address from, address to, uint256 amount) internal override {
        if (broken) revert TokenBroken();
        super._update(from, to, amount);
    }
}

/// @dev Calls back into `target` with `data` during every transfer; records whether the re-entry succeeded.
contract ReentrantToken is ERC20 {
    address public target;
    bytes public data;
    bool public reentered;
    bool public reentrySucceeded;

    constructor() ERC20("Reenter", "REENTER") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function arm(address target_, bytes calldata data_) external {
        target = target_;
        data = data_;
        reentered = false;
    }

    function _update(address from, address to, uint256 amount) internal override {
        super._update(from, to, amount);
        if (target != address(0) && !reentered && from != address(0)) {
            reentered = true;
            (reentrySucceeded,) = target.call(data);
        }
    }
}

/// @dev A contract account acting as buyer, seller, consumer or provider; its ETH receive can accept, revert or
/// re-enter.
contract Payee {
    enum Mode {
        Accept,
        Revert,
        Reenter
    }

    Mode public mode;
    address public reenterTarget;
    bytes public reenterData;
    bool public reentrySucceeded;
    uint256 public received;

    error PayeeRefuses();

    function setMode(Mode m) external {
        mode = m;
    }

    function armReentry(address target, bytes calldata data) external {
        mode = Mode.Reenter;
        reenterTarget = target;
        reenterData = data;
    }

    /// @dev Act as this account.
    function exec(address target, uint256 value, bytes calldata data) external payable returns (bytes memory) {
        (bool ok, bytes memory ret) = target.call{value: value}(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 0x20), mload(ret))
            }
        }
        return ret;
    }

    receive() external payable {
        if (mode == Mode.Revert) revert PayeeRefuses();
        received += msg.value;
        if (mode == Mode.Reenter) {
            mode = Mode.Accept;
            (reentrySucceeded,) = reenterTarget.call(reenterData);
        }
    }
}

/// @dev A token that lies selectively: a transfer to a `blocked` receiver returns false and moves nothing; a transfer
/// to a `phantom` receiver returns true and moves nothing.
contract SelectiveLiarToken is ERC20 {
    mapping(address => bool) public blocked;
    mapping(address => bool) public phantom;

    constructor() ERC20("Liar", "LIAR") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function setBlocked(address account, bool on) external {
        blocked[account] = on;
    }

    function setPhantom(address account, bool on) external {
        phantom[account] = on;
    }

    function transfer(address to, uint256 amount) public override returns (bool) {
        if (blocked[to]) return false;
        if (phantom[to]) return true;
        return super.transfer(to, amount);
    }
}

/// @dev A recipient that a {HookToken} calls on every transfer to it.
interface ITokenReceiverHook {
    function onTokenReceived(address from, uint256 amount) external;
}

/// @dev An ERC-20 that calls `onTokenReceived` on every recipient that registered a hook, after every transfer to
/// it (as ERC-777 / ERC-1363 style tokens do), and reverts if the hook reverts: the recipient decides whether and
/// how expensively it is paid.
contract HookToken is ERC20 {
    mapping(address account => bool) public hooked;

    constructor() ERC20("Hook", "HOOK") {}

    function setHooked(address account, bool on) external {
        hooked[account] = on;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function _update(address from, address to, uint256 amount) internal override {
        super._update(from, to, amount);
        if (from != address(0) && hooked[to]) ITokenReceiverHook(to).onTokenReceived(from, amount);
    }
}

/// @dev A payee whose token hook burns every unit of gas it is given.
contract GasBurningReceiver is ITokenReceiverHook {
    uint256 public burned;

    function onTokenReceived(address, uint256) external {
        while (true) {
            ++burned;
        }
    }
}
