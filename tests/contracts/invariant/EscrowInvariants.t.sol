// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "forge-std/Test.sol";

import {DeliveryEscrow} from "../../../contracts/DeliveryEscrow.sol";
import {DeviceRegistry} from "../../../contracts/DeviceRegistry.sol";
import {IDeliveryEscrow} from "../../../contracts/interfaces/IDeliveryEscrow.sol";
import {IDeviceRegistry} from "../../../contracts/interfaces/IDeviceRegistry.sol";
import {TestToken} from "../../../contracts/test/TestToken.sol";

/// @dev Drives DeliveryEscrow through random creates, deliveries (with replays), refunds, cancels, withdrawals
/// and time jumps, keeping ghost totals of every unit that moved.
contract EscrowHandler is Test {
    DeliveryEscrow public escrow;
    TestToken public token;
    bytes32 internal constant DEST = bytes32("dest");

    address[3] internal buyers = [address(0xB1), address(0xB2), address(0xB3)];
    address[3] internal sellers = [address(0x51), address(0x52), address(0x53)];
    uint256[2] internal trackerKeys = [uint256(0xA11CE), uint256(0xB0B)];
    address[2] public trackers;

    uint256[] public ids;
    mapping(uint256 escrowId => IDeliveryEscrow.EscrowState) public lastSeenState;
    mapping(address device => uint64) internal nextSeq;
    mapping(address device => mapping(uint64 seq => uint256)) public consumed;
    IDeliveryEscrow.SignedDelivery[] internal signedSoFar;

    mapping(address token => uint256) public ghostFunded;
    mapping(address token => uint256) public ghostToSellers;
    mapping(address token => uint256) public ghostToBuyersPenalty;
    mapping(address token => uint256) public ghostRefunded;
    mapping(address token => uint256) public ghostWithdrawn;
    uint256 public doubleConsumption;
    uint256 public backwardMoves;

    /// @dev The adversarial relayer's stream: the one honest delivery a tracker signs per escrow (at the destination,
    /// by the deadline), relayed whenever the relayer likes.
    mapping(uint256 escrowId => IDeliveryEscrow.SignedDelivery) internal honest;
    mapping(uint256 escrowId => bool) public signedHonest;
    /// @dev The honest delivery was relayed by deadline + SETTLEMENT_GRACE to an escrow its seller had not cancelled.
    mapping(uint256 escrowId => bool) public relayedInGrace;
    uint256 public lateRelays;

    constructor(DeliveryEscrow escrow_, TestToken token_, address[2] memory trackers_) {
        escrow = escrow_;
        token = token_;
        trackers = trackers_;
    }

    function allActors() public view returns (address[6] memory out) {
        for (uint256 i = 0; i < 3; ++i) {
            out[i] = buyers[i];
            out[i + 3] = sellers[i];
        }
    }

    function idsLength() external view returns (uint256) {
        return ids.length;
    }

    function _tokenOf(uint256 seed) internal view returns (address) {
        return seed % 2 == 0 ? address(0) : address(token);
    }

    struct Order {
        address buyer;
        address seller;
        address tracker;
        address token;
        uint256 amount;
        int32 limit;
        uint16 bps;
    }

    function create(uint256 actorSeed, uint256 amount, uint16 bps, int32 limit, bool erc20, uint8 trackerSeed)
        external
    {
        Order memory o = Order({
            buyer: buyers[actorSeed % 3],
            seller: sellers[(actorSeed / 3) % 3],
            tracker: trackers[trackerSeed % 2],
            token: erc20 ? address(token) : address(0),
            amount: bound(amount, 1, 1e24),
            limit: limit,
            bps: uint16(bound(bps, 0, 10_000))
        });
        uint256 id = _create(o);
        ids.push(id);
        lastSeenState[id] = IDeliveryEscrow.EscrowState.Funded;
        ghostFunded[o.token] += o.amount;
    }

    function _create(Order memory o) internal returns (uint256 id) {
        uint64 deadline = uint64(block.timestamp + 1 + (o.amount % 3 days));
        uint256 value = 0;
        if (o.token == address(0)) {
            vm.deal(o.buyer, o.amount);
            value = o.amount;
        } else {
            token.mint(o.buyer, o.amount);
            vm.prank(o.buyer);
            token.approve(address(escrow), o.amount);
        }
        vm.prank(o.buyer);
        id = escrow.createEscrow{value: value}(o.seller, o.tracker, o.token, o.amount, DEST, deadline, o.limit, o.bps);
    }

    function deliver(uint256 idSeed, int32 temp, uint256 replaySeed, bool wrongPlace) external {
        if (ids.length == 0) return;
        uint256 id = ids[idSeed % ids.length];
        IDeliveryEscrow.SignedDelivery memory fresh = _sign(id, temp, wrongPlace ? bytes32("elsewhere") : DEST);
        signedSoFar.push(fresh);

        // relay the fresh event together with an earlier one (at-least-once relaying replays old events)
        IDeliveryEscrow.SignedDelivery[] memory batch = new IDeliveryEscrow.SignedDelivery[](3);
        batch[0] = signedSoFar[replaySeed % signedSoFar.length];
        batch[1] = fresh;
        batch[2] = fresh;
        _relay(batch);
    }

    function _sign(uint256 id, int32 temp, bytes32 location)
        internal
        returns (IDeliveryEscrow.SignedDelivery memory d)
    {
        address device = escrow.escrowOf(id).device;
        d.escrowId = id;
        d.seq = ++nextSeq[device];
        d.timestamp = uint64(block.timestamp);
        d.location = location;
        d.maxTemperature = temp;
        bytes32 digest = escrow.hashDelivery(id, d.seq, d.timestamp, location, temp);
        (d.r, d.vs) = vm.signCompact(device == trackers[0] ? trackerKeys[0] : trackerKeys[1], digest);
    }

    function _relay(IDeliveryEscrow.SignedDelivery[] memory batch) internal {
        for (uint256 i = 0; i < batch.length; ++i) {
            _relayOne(batch[i]);
        }
    }

    function _relayOne(IDeliveryEscrow.SignedDelivery memory d) internal {
        IDeliveryEscrow.Escrow memory before = escrow.escrowOf(d.escrowId);
        uint256 sellerBefore = escrow.withdrawable(before.token, before.seller);
        uint256 buyerBefore = escrow.withdrawable(before.token, before.buyer);
        IDeliveryEscrow.SignedDelivery[] memory one = new IDeliveryEscrow.SignedDelivery[](1);
        one[0] = d;
        // Half the relays go through the packed batch with the escrow's terms: the outcome must not differ.
        uint256 released = d.seq % 2 == 0 ? escrow.confirmDeliveriesPacked(_packed(d)) : escrow.confirmDeliveries(one);
        if (released == 1) {
            if (++consumed[before.device][d.seq] > 1) ++doubleConsumption;
            ghostToSellers[before.token] += escrow.withdrawable(before.token, before.seller) - sellerBefore;
            ghostToBuyersPenalty[before.token] += escrow.withdrawable(before.token, before.buyer) - buyerBefore;
        }
        _observe(d.escrowId);
    }

    function _packed(IDeliveryEscrow.SignedDelivery memory d) internal view returns (bytes memory) {
        bytes memory terms = escrow.deliveryTerms(d.escrowId);
        return abi.encodePacked(uint64(d.escrowId), d.seq, d.timestamp, d.location, d.maxTemperature, d.r, d.vs, terms);
    }

    /// @dev The tracker signs its one delivery of an escrow now, if the deadline has not passed.
    function signHonest(uint256 idSeed, int32 temp) external {
        if (ids.length == 0) return;
        uint256 id = ids[idSeed % ids.length];
        if (signedHonest[id] || block.timestamp > escrow.escrowOf(id).deadline) return;
        honest[id] = _sign(id, temp, DEST);
        signedHonest[id] = true;
    }

    /// @dev The relayer hands the honest delivery over whenever it chooses (possibly after a refund attempt).
    function relayHonest(uint256 idSeed) external {
        if (ids.length == 0) return;
        uint256 id = ids[idSeed % ids.length];
        if (!signedHonest[id]) return;
        IDeliveryEscrow.Escrow memory e = escrow.escrowOf(id);
        if (block.timestamp <= uint256(e.deadline) + escrow.SETTLEMENT_GRACE()) {
            if (e.state != IDeliveryEscrow.EscrowState.Cancelled) relayedInGrace[id] = true;
            if (block.timestamp > e.deadline) ++lateRelays;
        }
        IDeliveryEscrow.SignedDelivery[] memory one = new IDeliveryEscrow.SignedDelivery[](1);
        one[0] = honest[id];
        _relay(one);
    }

    function warp(uint32 by) external {
        vm.warp(block.timestamp + bound(by, 0, 2 days));
    }

    /// @dev The race: the tracker signs at the deadline (if it has not signed yet), the buyer tries to refund the
    /// second after, and the relayer hands the delivery over `relayDelay` later (inside the grace or not).
    function raceRefund(uint256 idSeed, int32 temp, uint16 relayDelay) external {
        if (ids.length == 0) return;
        uint256 id = ids[idSeed % ids.length];
        IDeliveryEscrow.Escrow memory e = escrow.escrowOf(id);
        if (block.timestamp <= e.deadline) {
            vm.warp(e.deadline);
            this.signHonest(idSeed, temp);
            vm.warp(uint256(e.deadline) + 1);
        }
        vm.prank(e.buyer);
        try escrow.refund(id) {
            ghostRefunded[e.token] += e.amount;
        } catch {}
        _observe(id);
        vm.warp(block.timestamp + bound(relayDelay, 0, 2 hours));
        this.relayHonest(idSeed);
    }

    function refund(uint256 idSeed, uint32 wait) external {
        if (ids.length == 0) return;
        uint256 id = ids[idSeed % ids.length];
        vm.warp(block.timestamp + bound(wait, 0, 4 days));
        IDeliveryEscrow.Escrow memory e = escrow.escrowOf(id);
        vm.prank(e.buyer);
        try escrow.refund(id) {
            ghostRefunded[e.token] += e.amount;
        } catch {}
        _observe(id);
    }

    function cancel(uint256 idSeed) external {
        if (ids.length == 0) return;
        uint256 id = ids[idSeed % ids.length];
        IDeliveryEscrow.Escrow memory e = escrow.escrowOf(id);
        vm.prank(e.seller);
        try escrow.cancel(id) {
            ghostRefunded[e.token] += e.amount;
        } catch {}
        _observe(id);
    }

    function withdraw(uint256 actorSeed, bool erc20) external {
        address actor = allActors()[actorSeed % 6];
        address tok = erc20 ? address(token) : address(0);
        uint256 due = escrow.withdrawable(tok, actor);
        vm.prank(actor);
        try escrow.withdraw(tok) returns (uint256 amount) {
            assertEq(amount, due);
            ghostWithdrawn[tok] += amount;
        } catch {}
    }

    function _observe(uint256 id) internal {
        IDeliveryEscrow.EscrowState now_ = escrow.escrowOf(id).state;
        IDeliveryEscrow.EscrowState was = lastSeenState[id];
        if (now_ != was && was != IDeliveryEscrow.EscrowState.Funded) ++backwardMoves;
        lastSeenState[id] = now_;
    }
}

/// forge-config: default.invariant.runs = 16
/// forge-config: default.invariant.depth = 48
/// forge-config: ci.invariant.runs = 256
/// forge-config: ci.invariant.depth = 128
contract EscrowInvariantsTest is Test {
    DeviceRegistry internal registry;
    DeliveryEscrow internal escrow;
    TestToken internal token;
    EscrowHandler internal handler;

    function setUp() public {
        vm.warp(1_764_340_000);
        registry = new DeviceRegistry();
        escrow = new DeliveryEscrow(registry);
        token = new TestToken();
        address[2] memory trackers = [_register(0xA11CE), _register(0xB0B)];
        handler = new EscrowHandler(escrow, token, trackers);
        targetContract(address(handler));
        bytes4[] memory selectors = new bytes4[](9);
        selectors[0] = EscrowHandler.create.selector;
        selectors[1] = EscrowHandler.deliver.selector;
        selectors[2] = EscrowHandler.refund.selector;
        selectors[3] = EscrowHandler.cancel.selector;
        selectors[4] = EscrowHandler.withdraw.selector;
        selectors[5] = EscrowHandler.signHonest.selector;
        selectors[6] = EscrowHandler.relayHonest.selector;
        selectors[7] = EscrowHandler.warp.selector;
        selectors[8] = EscrowHandler.raceRefund.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    function _register(uint256 key) internal returns (address device) {
        device = vm.addr(key);
        uint64 deadline = uint64(block.timestamp);
        bytes32 digest =
            registry.hashRegistration(device, address(this), IDeviceRegistry.DeviceKind.Tracker, 0, deadline);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        registry.register(device, IDeviceRegistry.DeviceKind.Tracker, 0, deadline, abi.encodePacked(r, s, v));
    }

    /// @dev What the contract owes per token: credited balances plus escrows still funded.
    function _liabilities(address tok) internal view returns (uint256 owed, uint256 locked) {
        address[6] memory actors = handler.allActors();
        for (uint256 i = 0; i < 6; ++i) {
            owed += escrow.withdrawable(tok, actors[i]);
        }
        uint256 n = handler.idsLength();
        for (uint256 i = 0; i < n; ++i) {
            IDeliveryEscrow.Escrow memory e = escrow.escrowOf(handler.ids(i));
            if (e.token == tok && e.state == IDeliveryEscrow.EscrowState.Funded) locked += e.amount;
        }
    }

    /// @dev The handler reaches release, penalty, refund, cancel and withdrawal (so the invariants are not vacuous).
    function test_HandlerReachesEveryOutcome() public {
        handler.create(0, 1 ether, 5_000, 100, true, 0); // escrow 1, token, 50 % penalty above 1.00 °C
        handler.create(1, 2 ether, 0, 0, false, 1); // escrow 2, ETH
        handler.create(2, 3 ether, 0, 0, true, 0); // escrow 3
        handler.deliver(0, 500, 0, false); // releases 1 with a penalty, relayed three times
        handler.cancel(1); // escrow 2 cancelled by its seller
        handler.refund(2, 4 days); // escrow 3 refunded after its deadline
        handler.withdraw(3, true); // seller 0x51 takes its token credit
        assertEq(handler.ghostToSellers(address(token)), 0.5 ether);
        assertEq(handler.ghostToBuyersPenalty(address(token)), 0.5 ether);
        assertEq(handler.ghostRefunded(address(0)), 2 ether);
        assertEq(handler.ghostRefunded(address(token)), 3 ether);
        assertEq(handler.ghostWithdrawn(address(token)), 0.5 ether);
        invariant_Accounting();
        invariant_StateMachine();
    }

    /// @dev Money: the contract holds at least what it owes (credits + funded escrows), and every unit a buyer
    /// paid in is, exactly once, still locked, credited to the seller, returned as a cold-chain penalty or refunded.
    function invariant_Accounting() public view {
        address[2] memory toks = [address(0), address(token)];
        for (uint256 t = 0; t < 2; ++t) {
            address tok = toks[t];
            (uint256 owed, uint256 locked) = _liabilities(tok);
            uint256 held = tok == address(0) ? address(escrow).balance : token.balanceOf(address(escrow));
            assertEq(escrow.credited(tok), owed, "the ledger total is the sum of the credits");
            assertGe(held, escrow.credited(tok) + locked, "balance covers credits and funded escrows");
            assertEq(held, owed + locked, "nothing unaccounted for");
            assertEq(
                handler.ghostFunded(tok),
                locked + handler.ghostToSellers(tok) + handler.ghostToBuyersPenalty(tok) + handler.ghostRefunded(tok),
                "payer debit = payee credit + refund"
            );
            assertEq(handler.ghostFunded(tok), held + handler.ghostWithdrawn(tok), "withdrawals match credits");
        }
    }

    /// @dev States only move forward (Funded → one terminal state); release and refund are exclusive (a released
    /// escrow, and only a released one, records the delivery that released it); each (device, seq) releases at
    /// most once although the handler relays every event several times.
    function invariant_StateMachine() public view {
        assertEq(handler.backwardMoves(), 0, "forward-only");
        assertEq(handler.doubleConsumption(), 0, "each (device, seq) consumed once");
        uint256 n = handler.idsLength();
        for (uint256 i = 0; i < n; ++i) {
            IDeliveryEscrow.Escrow memory e = escrow.escrowOf(handler.ids(i));
            assertEq(e.deliverySeq != 0, e.state == IDeliveryEscrow.EscrowState.Released, "release xor refund");
        }
    }

    /// @dev Relayers choose nothing: a delivery signed by the deadline and relayed by deadline + grace releases the
    /// escrow (to the seller) whatever refund attempts raced it.
    function invariant_DeliveryInTimeIsPaid() public view {
        uint256 n = handler.idsLength();
        for (uint256 i = 0; i < n; ++i) {
            uint256 id = handler.ids(i);
            if (!handler.relayedInGrace(id)) continue;
            assertEq(
                uint8(escrow.escrowOf(id).state), uint8(IDeliveryEscrow.EscrowState.Released), "the seller got paid"
            );
        }
    }

    /// @dev The handler reaches the race: a delivery signed at the deadline, a refund attempt the second after, and
    /// the relay inside the grace; the seller is paid.
    function test_RelayHandlerReachesTheRace() public {
        handler.create(0, 3 ether, 0, 0, true, 0);
        uint256 id = handler.ids(0);
        uint64 deadline = escrow.escrowOf(id).deadline;
        vm.warp(deadline);
        handler.signHonest(0, 0);
        handler.refund(0, 1); // one second after the deadline: too early
        handler.warp(30 minutes);
        handler.relayHonest(0);
        assertEq(handler.lateRelays(), 1);
        assertEq(escrow.withdrawable(address(token), address(0x51)), 3 ether);
        invariant_DeliveryInTimeIsPaid();
        invariant_Accounting();
    }
}
