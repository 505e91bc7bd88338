// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IDeviceEvents} from "./IDeviceEvents.sol";
import {IPullPayments} from "./IPullPayments.sol";

/// @title Parametric crop insurance paid from an insurer's ERC-20 pool on the verdict of k of n weather stations.
/// @notice An insurer funds a pool and opens seasons on it: a window [start, end], a location (`region`), an index
/// (rain below a threshold, or at least `triggerDays` hot days) and n registered WEATHER_STATION devices of which k
/// must agree. Farmers buy cover before `saleEnd`; the pool never sells more cover than it holds. Stations sign
/// `WeatherObservation`s that anyone relays with {record}; after `end + finalizeDelay` anyone calls {finalize},
/// which decides the verdict, and then {payOut} pays every policy of a triggered season its cover, with no claim,
/// in pages of the caller's size.
///
/// Because 2 ≤ k ≤ n − 1, one faulty or hostile station can neither trigger a payout the other n − 1 stations
/// do not vote for (it is at most one trigger vote, and k ≥ 2) nor block one they all vote for (n − 1 ≥ k).
///
/// Relayers choose nothing: a station numbers its observations 1, 2, 3… without gaps from its registration and the
/// contract takes them only in that order (a gap is refused with `SequenceGap` and the observation can be relayed
/// again later), so the observations a season counts are the same whatever subset, order or batching relayers
/// pick; a station votes only once the contract holds one of its observations dated after the end (so it holds
/// every earlier one). Withholding observations can only delay a station's vote, or make it abstain if they are
/// still withheld when the season is finalized; it can never change the vote.
interface ICropInsurance is IDeviceEvents, IPullPayments {
    /// @notice The parametric index of a season.
    /// RainfallBelow: a station votes Trigger iff the rain it measured in the season (hundredths of a mm) is
    /// below `threshold`. HotDaysAbove: a station votes Trigger iff it saw at least `triggerDays` UTC days with an
    /// observation whose maxTemperature (hundredths of °C) is ≥ `threshold`.
    enum Index {
        RainfallBelow,
        HotDaysAbove
    }

    /// @notice A station's vote at finalization. Abstain: it did not cover the season (no observation within
    /// `coverageSlack` of the start or of the end, or none dated after the end recorded yet), or it was released.
    enum Verdict {
        Abstain,
        NoTrigger,
        Trigger
    }

    /// @notice Active until the season is finalized; then Expired (not triggered) or Due (triggered, payout not
    /// yet made by {payOut}) and then Paid (pushed, or credited to the beneficiary for {withdraw}).
    enum CoverStatus {
        None,
        Active,
        Paid,
        Expired,
        Due
    }

    /// @notice What the insurer fixes when opening a season; never changes afterwards.
    struct SeasonTerms {
        uint64 start;
        uint64 end;
        uint64 saleEnd;
        uint32 coverageSlack;
        uint32 finalizeDelay;
        Index index;
        int64 threshold;
        uint16 triggerDays;
        uint16 premiumBps;
        uint8 k;
        bytes32 region;
        address[] stations;
    }

    /// @notice A station's `WeatherObservation(station, seq, timestamp, rainfall, maxTemperature)` with its
    /// signature in the ERC-2098 compact form (`vs` = s with the top bit set when v is 28).
    struct SignedObservation {
        address station;
        uint64 seq;
        uint64 timestamp;
        uint64 rainfall;
        int32 maxTemperature;
        bytes32 r;
        bytes32 vs;
    }

    /// @notice An insurer's pool. `assets` = tokens the pool owns in the contract; `locked` = cover sold and not
    /// yet paid or expired. Always locked ≤ assets.
    struct Pool {
        address owner;
        address token;
        uint256 assets;
        uint256 locked;
    }

    /// @notice A season: its terms, its pool, and how far finalization and payouts got. `paidUpTo`: policies
    /// (in purchase order) {payOut} has processed; set to `policies` when a season finalizes untriggered.
    struct Season {
        SeasonTerms terms;
        uint256 poolId;
        bool finalized;
        bool triggered;
        uint8 triggerVotes;
        uint8 noTriggerVotes;
        uint8 abstentions;
        uint256 policies;
        uint256 paidUpTo;
        uint256 coverSold;
    }

    /// @notice One policy: `cover` token units go to `beneficiary` if the season triggers.
    struct Cover {
        uint256 seasonId;
        address buyer;
        address beneficiary;
        uint256 cover;
        uint256 premium;
        CoverStatus status;
    }

    /// @notice What a station reported inside one season's window. `firstTimestamp` = 0: nothing yet.
    /// `lastHotDay` = the last UTC day (timestamp / 86400) counted as hot, plus one (0: none).
    struct StationSeason {
        uint64 firstTimestamp;
        uint64 firstRainfall;
        uint64 lastTimestamp;
        uint64 lastRainfall;
        uint32 hotDays;
        uint64 lastHotDay;
    }

    /// @notice The station's last accepted observation (any season or none).
    struct StationState {
        uint64 lastSeq;
        uint64 lastTimestamp;
        uint64 lastRainfall;
    }

    event PoolCreated(uint256 indexed poolId, address indexed owner, address token);
    event PoolDeposited(uint256 indexed poolId, uint256 amount);
    event PoolWithdrawn(uint256 indexed poolId, uint256 amount);
    event SeasonCreated(uint256 indexed seasonId, uint256 indexed poolId, SeasonTerms terms);
    event CoverBought(
        uint256 indexed policyId,
        uint256 indexed seasonId,
        address indexed buyer,
        address beneficiary,
        uint256 cover,
        uint256 premium
    );
    /// @notice A station's observation was accepted (and applied to every open season whose window holds it).
    event ObservationRecorded(
        address indexed station, uint64 seq, uint64 timestamp, uint64 rainfall, int32 maxTemperature
    );
    /// @notice A batch item was skipped; nothing changed for it.
    event ObservationRejected(address indexed station, uint64 seq, RejectReason reason);
    /// @notice A station's vote; `measured` = rain in hundredths of a mm (RainfallBelow) or hot days
    /// (HotDaysAbove), 0 when it abstains.
    event StationVerdict(uint256 indexed seasonId, address indexed station, Verdict verdict, int256 measured);
    event SeasonFinalized(
        uint256 indexed seasonId, bool triggered, uint8 triggerVotes, uint8 noTriggerVotes, uint8 abstentions
    );
    /// @notice The policy was paid its cover. If a {Credited} of the beneficiary follows in the same call, the
    /// bounded push failed and the amount waits for the beneficiary in {withdraw}(token).
    event PayoutSent(uint256 indexed policyId, address indexed beneficiary, uint256 amount);
    /// @notice The station's owner took the station out of an unfinalized season: it abstains there and its slot
    /// is free for another season (the answer to seasons that name a station only to occupy its slots).
    event StationReleased(uint256 indexed seasonId, address indexed station);
    /// @notice The station's owner allowed (or stopped allowing) `insurer` to name the station in new seasons.
    event InsurerAllowed(address indexed station, address indexed insurer, bool allowed);

    error UnknownPool(uint256 poolId);
    error NotPoolOwner(uint256 poolId, address caller);
    /// @notice The pool owner asked for more than the free assets (assets − locked).
    error InsufficientFreeAssets(uint256 poolId, uint256 free, uint256 requested);
    /// @notice A station of the season already has an observation dated at or after the start recorded: the
    /// season would miss it. Open the season with a later start.
    error StationReportedSinceStart(address station, uint64 lastTimestamp);
    /// @notice saleEnd ≤ start < end, start > 0, end − start ≤ MAX_SEASON_LENGTH, start ≤ now + MAX_SEASON_LEAD.
    error InvalidWindow(uint64 saleEnd, uint64 start, uint64 end);
    error FinalizeDelayTooLong(uint32 finalizeDelay);
    /// @notice finalizeDelay ≥ MIN_FINALIZE_DELAY: the time relayers have after the end to bring the stations' last
    /// observations (and one dated after the end) on chain.
    error FinalizeDelayTooShort(uint32 finalizeDelay, uint32 minimum);
    /// @notice coverageSlack ≥ MIN_COVERAGE_SLACK: with less, a station must report at almost exactly the start and
    /// the end to vote, and a trigger becomes practically impossible.
    error CoverageSlackTooShort(uint32 coverageSlack, uint32 minimum);
    /// @notice 3 ≤ n ≤ MAX_STATIONS and 2 ≤ k ≤ n − 1.
    error InvalidQuorum(uint8 k, uint256 n);
    /// @notice 0 < premiumBps ≤ 10_000.
    error InvalidPremium(uint16 premiumBps);
    /// @notice RainfallBelow needs threshold > 0; HotDaysAbove needs triggerDays > 0.
    error InvalidIndex(Index index, int64 threshold, uint16 triggerDays);
    error DuplicateStation(address station);
    /// @notice The station is not a registered, active WEATHER_STATION.
    error InvalidStation(address station);
    /// @notice The station already serves MAX_SEASONS_PER_STATION unfinalized seasons.
    error StationBusy(address station);
    error UnknownSeason(uint256 seasonId);
    error SaleClosed(uint256 seasonId, uint64 saleEnd);
    /// @notice The pool cannot lock the cover: `available` = assets (with this premium) − locked.
    error InsufficientCapacity(uint256 available);
    error AlreadyFinalized(uint256 seasonId);
    error NotFinalized(uint256 seasonId);
    error NotStationOwner(address station, address caller);
    error StationNotInSeason(uint256 seasonId, address station);
    /// @notice The station's owner has not allowed this pool owner to name the station in a season
    /// ({allowInsurer}).
    error StationNotAllowed(address station, address insurer);
    /// @notice A station can be released from a season only before its saleEnd: after it, buyers have relied on the
    /// station set.
    error ReleaseClosed(uint256 seasonId, uint64 saleEnd);
    /// @notice A packed {record} batch whose length is not a multiple of the 112-byte observation.
    error MalformedBatch(uint256 length);

    // ---------------------------------------------------------------- pools

    /// @notice Open a pool in ERC-20 `token` owned by msg.sender. Emits a {PoolCreated} event.
    function createPool(address token) external returns (uint256 poolId);

    /// @notice Pool owner: add `amount` of the pool token (pulled from msg.sender; the balance must grow by exactly
    /// `amount`, else {WrongValue}). Emits a {PoolDeposited} event.
    function depositToPool(uint256 poolId, uint256 amount) external;

    /// @notice Pool owner: take `amount` ≤ assets − locked out of the pool (sent to msg.sender).
    /// Emits a {PoolWithdrawn} event.
    function withdrawFromPool(uint256 poolId, uint256 amount) external;

    // ---------------------------------------------------------------- seasons and cover

    /// @notice Pool owner: open a season on `poolId` (see {SeasonTerms} and the checks in the errors). Every
    /// station's owner must have allowed msg.sender with {allowInsurer}, else {StationNotAllowed}.
    /// Emits a {SeasonCreated} event.
    function createSeason(uint256 poolId, SeasonTerms calldata terms) external returns (uint256 seasonId);

    /// @notice Buy `cover` for `beneficiary` (0: msg.sender) before the season's saleEnd. The premium
    /// ceil(cover × premiumBps / 10_000) is pulled from msg.sender into the pool; the pool must then hold
    /// locked + cover ≤ assets, else {InsufficientCapacity}. Emits a {CoverBought} event.
    function buyCover(uint256 seasonId, uint256 cover, address beneficiary) external returns (uint256 policyId);

    // ---------------------------------------------------------------- observations

    /// @notice Relay signed weather observations (anyone). A station's observations are taken in gapless seq
    /// order: seq ≤ the last recorded one is `Replayed`, seq > last + 1 is `SequenceGap` (relay the missing one
    /// first; this one can be relayed again). Each accepted one moves its station's state and is applied to every
    /// unfinalized season of the station whose window [start, end] holds its timestamp; bad items are skipped with
    /// an {ObservationRejected} event. Returns how many were recorded.
    /// The batch is packed back to back, 112 bytes per observation: station (20 bytes) ‖ seq (8) ‖ timestamp (8) ‖
    /// rainfall (8) ‖ maxTemperature (4, two's complement) ‖ r (32) ‖ vs (32), integers big-endian: the signed
    /// WeatherObservation in its own widths and the ERC-2098 compact signature. Reverts with {MalformedBatch} when
    /// the length is not a multiple of 112.
    function record(bytes calldata observations) external returns (uint256 recorded);

    /// @notice The station's owner (in the DeviceRegistry): allow `insurer` (a pool owner) to name `station` in new
    /// seasons, or stop allowing it (`allowed` false; seasons already created keep the station). Only allowed
    /// insurers can take one of the station's MAX_SEASONS_PER_STATION slots. Emits an {InsurerAllowed} event.
    function allowInsurer(address station, address insurer, bool allowed) external;

    /// @notice The station's owner (in the DeviceRegistry): stop serving season `seasonId`, before its saleEnd
    /// (else {ReleaseClosed}: after it buyers have relied on the station set, and after the end its owner would
    /// choose with the votes in sight). The station abstains in it (as if it had stopped reporting) and its slot is
    /// freed. Emits a {StationReleased} event.
    function releaseStation(uint256 seasonId, address station) external;

    // ---------------------------------------------------------------- finalization and payouts

    /// @notice Anyone, once block.timestamp ≥ end + finalizeDelay (else {TooEarly}): count the stations' votes
    /// (O(stations), no policy is touched), release the cover sold from the pool's locked amount and, if the season
    /// triggered, take it out of the pool's assets as payouts due. Emits a {StationVerdict} per station and a
    /// {SeasonFinalized} event. Payouts follow with {payOut}.
    function finalize(uint256 seasonId) external;

    /// @notice Anyone: pay the next `maxPolicies` policies of a finalized, triggered season their cover, in purchase
    /// order. Each payout is a bounded push ({PullPayments}); one that fails (a payee that reverts or burns gas, a
    /// token that refuses) is credited to the beneficiary for {withdraw}, so no payee can stop another's payment.
    /// Emits a {PayoutSent} event per policy. Returns how many were processed (0 once all are done, and always 0
    /// for an untriggered season).
    function payOut(uint256 seasonId, uint256 maxPolicies) external returns (uint256 processed);

    // ---------------------------------------------------------------- views

    /// @notice The pool (all zero if unknown).
    function poolOf(uint256 poolId) external view returns (Pool memory);

    /// @notice The season's terms, pool, outcome and payout progress (all zero if unknown).
    function seasonOf(uint256 seasonId) external view returns (Season memory);

    /// @notice The policy (all zero if unknown); its status as of now (Expired / Due once its season is finalized).
    function coverOf(uint256 policyId) external view returns (Cover memory);

    /// @notice The figures `station` accumulated inside `seasonId`'s window.
    function stationSeason(uint256 seasonId, address station) external view returns (StationSeason memory);

    /// @notice The station's last accepted observation: the next one needs seq = lastSeq + 1, a timestamp not
    /// before it and a rain register not below it.
    function stationState(address station) external view returns (StationState memory);

    /// @notice The unfinalized seasons `station` serves (at most MAX_SEASONS_PER_STATION).
    function seasonsOfStation(address station) external view returns (uint256[] memory);

    /// @notice Whether the station's owner allows `insurer` to name `station` in new seasons.
    function insurerAllowed(address station, address insurer) external view returns (bool);

    /// @notice The policy ids of a season in purchase order (payouts follow this order).
    function policiesOf(uint256 seasonId) external view returns (uint256[] memory);

    /// @notice Payouts of triggered seasons in `token` not yet made by {payOut}. With every pool's assets and
    /// {credited}, it is what the contract owes in `token`; its balance always covers the three.
    function payoutsDue(address token) external view returns (uint256);

    /// @notice The verdict `station` would give for `seasonId` if the season were finalized now (Abstain until an
    /// observation of the station dated after the end is recorded).
    function verdictOf(uint256 seasonId, address station) external view returns (Verdict verdict, int256 measured);

    /// @notice The EIP-712 digest a station signs for this observation.
    function hashObservation(address station, uint64 seq, uint64 timestamp, uint64 rainfall, int32 maxTemperature)
        external
        view
        returns (bytes32);
}
