// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IDeviceEvents} from "./IDeviceEvents.sol";
import {IPullPayments} from "./IPullPayments.sol";

/// @title Prepaid metered billing settled from a meter's device-signed cumulative register.
/// @notice Agreement ids are minted by the contract as `device << 96 | tariffId << 64 | serial`, so `settle` knows
/// the device and tariff of an agreement without reading a second storage slot. Treat them as opaque uint256.
/// Ending rule: readings signed up to `closeAt` settle until the agreement is closed; {close} opens strictly after
/// `closeAt + SETTLEMENT_GRACE`; readings signed after `closeAt` are refused with AfterEnd.
interface IMeteredBilling is IDeviceEvents, IPullPayments {
    /// @notice Offered → Active ⇄ Suspended → Closed; Offered → Cancelled.
    enum AgreementStatus {
        None,
        Offered,
        Active,
        Suspended,
        Closed,
        Cancelled
    }

    /// @notice One block of a tariff: the next `units` of consumption (counted from the agreement start) cost
    /// `price` token base units each. The last block must have `units` = 0 and is unbounded. A flat tariff is one
    /// block.
    struct TariffBlock {
        uint64 units;
        uint128 price;
    }

    struct Agreement {
        address provider;
        address consumer;
        address device;
        address token;
        uint32 tariffId;
        AgreementStatus status;
        uint32 noticePeriod;
        uint64 closeAt;
        uint64 startValue;
        uint64 lastValue;
        uint64 lastSeq;
        uint64 lastTimestamp;
        uint256 prepaid;
        uint256 arrears;
        uint256 deposited;
        uint256 withdrawn;
    }

    /// @notice A meter's `Reading(agreementId, seq, timestamp, value)` with its signature in the ERC-2098 compact
    /// form: `vs` = s with the top bit set when v is 28 (65-byte r‖s‖v converts losslessly).
    struct SignedReading {
        uint256 agreementId;
        uint64 seq;
        uint64 timestamp;
        uint256 value;
        bytes32 r;
        bytes32 vs;
    }

    event TariffCreated(uint32 indexed tariffId, address indexed creator, TariffBlock[] blocks);
    event AgreementOffered(
        uint256 indexed agreementId,
        address indexed provider,
        address indexed consumer,
        address device,
        address token,
        uint32 tariffId,
        uint64 startValue,
        uint32 noticePeriod
    );
    event OfferCancelled(uint256 indexed agreementId, address by);
    event AgreementAccepted(uint256 indexed agreementId, uint256 deposit);
    /// @notice `amount` arrived; `arrearsPaid` of it went to the provider first.
    event ToppedUp(uint256 indexed agreementId, address indexed from, uint256 amount, uint256 arrearsPaid);
    /// @notice Readings moved their registers to new values: one log per transaction, `records` packed back to
    /// back, 49 bytes each: agreementId (32) ‖ seq (5) ‖ amount (12), integers big-endian, in batch order; `amount`
    /// was billed from the agreement's prepaid balance. One log instead of one per reading saves ≈ 1,300 gas a
    /// reading; readers decode the records (`iotsettle.oracle.protocol.settled`) and filter by agreement.
    event ReadingsSettled(bytes records);
    /// @notice A batch item was skipped; nothing changed for it.
    event ReadingRejected(uint256 indexed agreementId, uint64 seq, RejectReason reason);
    /// @notice The prepaid balance ran out; `arrears` is the total still owed. Readings are refused until a top-up.
    event AgreementSuspended(uint256 indexed agreementId, uint256 arrears);
    event AgreementResumed(uint256 indexed agreementId);
    event EarningsWithdrawn(uint256 indexed agreementId, address indexed provider, uint256 amount);
    event CloseRequested(uint256 indexed agreementId, uint64 closeAt);
    /// @notice The consumer got `refund` (the unbilled prepaid balance) back.
    event AgreementClosed(uint256 indexed agreementId, uint256 refund);

    /// @notice A packed batch whose length is not a whole number of items.
    error MalformedBatch(uint256 length);
    error InvalidTariff();
    error UnknownTariff(uint32 tariffId);
    error UnknownAgreement(uint256 agreementId);
    error NotProvider(uint256 agreementId, address caller);
    error NotConsumer(uint256 agreementId, address caller);
    error WrongStatus(uint256 agreementId, AgreementStatus status);
    /// @notice The provider has no billed, unwithdrawn earnings on `agreementId`.
    error NoEarnings(uint256 agreementId);

    /// @notice Store an immutable tariff anyone may use. Emits a {TariffCreated} event.
    function createTariff(TariffBlock[] calldata blocks) external returns (uint32 tariffId);

    /// @notice Provider (msg.sender) offers `consumer` an agreement for a METER or VEHICLE `device` whose register
    /// reads `startValue` now, billed in `token` (address(0) = ETH). Emits an {AgreementOffered} event.
    function offer(
        address consumer,
        address device,
        uint32 tariffId,
        address token,
        uint64 startValue,
        uint32 noticePeriod
    ) external returns (uint256 agreementId);

    /// @notice Provider withdraws, or consumer declines, an offer not yet accepted. Emits an {OfferCancelled} event.
    function cancelOffer(uint256 agreementId) external;

    /// @notice Consumer accepts the offer whose register starts at `startValue` and prepays `deposit` (msg.value
    /// for ETH). Reverts with {TermsMismatch} (expected, accepted start value as bytes32) when `startValue` is not
    /// the offer's: an acceptance names what it accepts. Emits an {AgreementAccepted} event.
    function accept(uint256 agreementId, uint256 deposit, uint64 startValue) external payable;

    /// @notice Anyone adds to the consumer's prepaid balance; arrears are paid first and a suspended agreement
    /// resumes once they are cleared. Emits a {ToppedUp} event (and {AgreementResumed}).
    function topUp(uint256 agreementId, uint256 amount) external payable;

    /// @notice Bill a batch of readings packed back to back, 114 bytes each: agreementId (32 bytes) ‖ seq (5) ‖
    /// timestamp (5) ‖ value (8) ‖ r (32) ‖ vs (32), integers big-endian. The signed Reading is the same as in
    /// {settleReading}; the packed form only narrows seq and timestamp to 40 bits and value to 64 bits, the ranges
    /// the contract accepts. Reverts with {MalformedBatch} when the length is not a multiple of 114; bad items are
    /// skipped with a {ReadingRejected} event
    /// each; the settled ones are reported together in one {ReadingsSettled} event at the end.
    /// @return settled how many readings were settled.
    function settle(bytes calldata readings) external returns (uint256 settled);

    /// @notice Bill one reading; reverts with {EventRejected} if it cannot. Emits a {ReadingsSettled} event with one record.
    function settleReading(SignedReading calldata reading) external;

    /// @notice Provider withdraws everything billed and not yet withdrawn; reverts with {NoEarnings} when there is
    /// nothing. Emits an {EarningsWithdrawn} event.
    function withdrawEarnings(uint256 agreementId) external returns (uint256 amount);

    /// @notice Consumer starts the notice period: `closeAt` = now + noticePeriod. Readings signed up to `closeAt`
    /// keep settling until the close; later ones are refused with AfterEnd. A second request changes nothing.
    /// Emits a {CloseRequested} event.
    function requestClose(uint256 agreementId) external;

    /// @notice Consumer closes strictly after `closeAt + SETTLEMENT_GRACE` (reverts with {TooEarly} until then,
    /// with {CloseNotRequested} without a request) and is paid the prepaid rest: pushed with bounded gas, credited
    /// for {withdraw} when the push fails. Emits an {AgreementClosed} event.
    function close(uint256 agreementId) external returns (uint256 refund);

    /// @notice Consumer settles a fresh final reading (timestamp within MAX_CLOCK_SKEW of now) and starts the end
    /// now, without the notice period: `closeAt` becomes the block time (or stays, if already earlier). It pays
    /// nothing: readings signed by `closeAt` keep settling during the grace and the refund comes from {close}.
    /// Reverts with {EventRejected} if the reading cannot settle (AfterEnd once `closeAt` has passed). Emits
    /// {ReadingsSettled} (one record) and, when `closeAt` moves, {CloseRequested} events.
    function closeWithReading(SignedReading calldata reading) external returns (uint64 closeAt);

    function agreementOf(uint256 agreementId) external view returns (Agreement memory);

    function tariffOf(uint32 tariffId) external view returns (TariffBlock[] memory);

    /// @notice Earnings the provider can withdraw now.
    function earningsOf(uint256 agreementId) external view returns (uint256);

    /// @notice Price of consumption from `fromUsed` to `toUsed` units (counted from the agreement start).
    function costOf(uint32 tariffId, uint64 fromUsed, uint64 toUsed) external view returns (uint256);

    /// @notice The EIP-712 digest a meter signs for a Reading.
    function hashReading(uint256 agreementId, uint64 seq, uint64 timestamp, uint256 value)
        external
        view
        returns (bytes32);
}
