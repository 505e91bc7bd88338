// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

import {LoanBook} from "../../../contracts/LoanBook.sol";
import {IDeliveryEscrow} from "../../../contracts/interfaces/IDeliveryEscrow.sol";
import {IDeviceRegistry} from "../../../contracts/interfaces/IDeviceRegistry.sol";
import {ILoanBook} from "../../../contracts/interfaces/ILoanBook.sol";
import {Fixture} from "./Fixture.sol";

/// @dev Refuses transfers to or from blocked accounts (a token with a blacklist, like several stablecoins).
contract BlocklistToken is ERC20 {
    mapping(address account => bool) public blocked;

    error Blocked(address account);

    constructor() ERC20("Blocklist", "BLOCK") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function setBlocked(address account, bool on) external {
        blocked[account] = on;
    }

    function _update(address from, address to, uint256 amount) internal override {
        if (blocked[to]) revert Blocked(to);
        if (blocked[from]) revert Blocked(from);
        super._update(from, to, amount);
    }
}

/// @dev A payout source that misbehaves when the loan's account calls its `withdraw(address)`.
contract HostileSource {
    enum Mode {
        ReturnNothing,
        RevertWithHugeData,
        Reenter
    }

    Mode public mode;
    address public target;
    bytes public data;
    bool public reentrySucceeded;

    error Huge(bytes blob);

    function setMode(Mode m) external {
        mode = m;
    }

    function arm(address target_, bytes calldata data_) external {
        mode = Mode.Reenter;
        target = target_;
        data = data_;
    }

    fallback() external payable {
        if (mode == Mode.RevertWithHugeData) revert Huge(new bytes(100_000));
        if (mode == Mode.Reenter) {
            (reentrySucceeded,) = target.call(data);
            return;
        }
        // ReturnNothing: a successful call with empty return data, which `returns (uint256)` could not decode.
    }
}

/// @dev Deploys a LoanBook next to the base fixture's registry/escrow/token and opens loans.
abstract contract LoanFixture is Fixture {
    LoanBook internal book;

    address internal lender = makeAddr("lender");
    address internal borrower = makeAddr("borrower");
    address internal stranger = makeAddr("stranger");

    uint256 internal constant PRINCIPAL = 1_000e18;
    uint256 internal constant REPAYMENT = 1_100e18;
    uint16 internal constant SHARE = 5_000; // half of every payout until repaid
    uint64 internal constant ACCEPT_WINDOW = 7 days;
    uint64 internal constant TERM = 180 days;

    function setUp() public virtual override {
        super.setUp();
        book = new LoanBook();
    }

    function offerLoan(address tok, uint256 principal, uint256 repayment, uint16 shareBps)
        internal
        returns (uint256 loanId)
    {
        MintableLike(tok).mint(lender, principal);
        vm.startPrank(lender);
        MintableLike(tok).approve(address(book), principal);
        loanId = book.offer(
            borrower,
            tok,
            principal,
            repayment,
            shareBps,
            uint64(block.timestamp + ACCEPT_WINDOW),
            uint64(block.timestamp + TERM)
        );
        vm.stopPrank();
    }

    /// @dev Offer + accept; returns the loan id and its payout account.
    function openLoan(address tok, uint256 principal, uint256 repayment, uint16 shareBps)
        internal
        returns (uint256 loanId, address account)
    {
        loanId = offerLoan(tok, principal, repayment, shareBps);
        vm.prank(borrower);
        account = book.accept(loanId);
    }

    function noSources() internal pure returns (address[] memory) {
        return new address[](0);
    }

    function oneSource(address source) internal pure returns (address[] memory s) {
        s = new address[](1);
        s[0] = source;
    }

    /// @dev A real escrow whose seller is `payee`, released by a registered tracker's signed delivery.
    function releaseEscrowTo(uint256 trackerKey, address payee, address tok, uint256 amount)
        internal
        returns (uint256 escrowId)
    {
        address tracker = vm.addr(trackerKey);
        if (registry.deviceOf(tracker).status == IDeviceRegistry.DeviceStatus.None) {
            registerDevice(trackerKey, IDeviceRegistry.DeviceKind.Tracker, owner);
        }
        bytes32 dest = bytes32("market");
        uint64 deadline = uint64(block.timestamp + 1 days);
        if (tok == address(0)) {
            vm.deal(buyer, amount);
            vm.prank(buyer);
            escrowId = escrow.createEscrow{value: amount}(payee, tracker, tok, amount, dest, deadline, 0, 0);
        } else {
            MintableLike(tok).mint(buyer, amount);
            vm.startPrank(buyer);
            MintableLike(tok).approve(address(escrow), amount);
            escrowId = escrow.createEscrow(payee, tracker, tok, amount, dest, deadline, 0, 0);
            vm.stopPrank();
        }
        IDeliveryEscrow.SignedDelivery memory d =
            signDelivery(trackerKey, escrowId, 1, uint64(block.timestamp), dest, 0);
        vm.prank(relayer);
        escrow.confirmDelivery(d);
    }

    function assertLoan(uint256 loanId, ILoanBook.LoanStatus status, uint256 repaid) internal view {
        ILoanBook.Loan memory l = book.loanOf(loanId);
        assertEq(uint8(l.status), uint8(status), "status");
        assertEq(l.repaid, repaid, "repaid");
    }
}

interface MintableLike {
    function mint(address to, uint256 amount) external;
    function approve(address spender, uint256 amount) external returns (bool);
}
