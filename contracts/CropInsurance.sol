// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";

import {DeviceEventVerifier} from "./DeviceEventVerifier.sol";
import {ICropInsurance} from "./interfaces/ICropInsurance.sol";
import {IDeviceRegistry} from "./interfaces/IDeviceRegistry.sol";
import {Funds} from "./money/Funds.sol";
import {PullPayments} from "./money/PullPayments.sol";

/// @title CropInsurance: parametric cover from k-of-n weather stations, paid from an insurer's ERC-20 pool.
/// @notice Rules (docs/products/crop-insurance.md has the worked examples):
/// - Pool: assets = deposits + premiums − withdrawals − cover of triggered seasons; locked = cover sold in seasons
///   not yet finalized. `locked ≤ assets` always: {buyCover} refuses cover the pool cannot pay
///   ({InsufficientCapacity}) and the owner can only {withdrawFromPool} the free part (assets − locked).
/// - Premium = ceil(cover × premiumBps / 10_000), paid into the pool. Payout = exactly the cover, once.
/// - Observations: a station's seq runs 1, 2, 3… without gaps from its registration; {record} takes seq = last + 1
///   only (`Replayed` at or below the last, `SequenceGap` above last + 1), so every relayed subset is a prefix of
///   the station's stream and a season sees every observation of its window, in order, whoever relays.
/// - Station verdict: Abstain unless firstTimestamp ≤ start + coverageSlack and lastTimestamp + coverageSlack ≥
///   end (its first and last observations inside [start, end]) and the station has an observation dated after the
///   end recorded (then, seqs being gapless and timestamps non-decreasing, every one of its observations of the
///   window is recorded: none withheld can change the figures). Otherwise RainfallBelow: measured = lastRainfall −
///   firstRainfall (0.01 mm), Trigger iff measured < threshold; HotDaysAbove: measured = hot days (UTC days
///   timestamp / 86400 with an observation whose maxTemperature ≥ threshold, each day counted once), Trigger iff
///   measured ≥ triggerDays. The season triggers iff Trigger votes ≥ k; abstentions count as not triggering.
/// - Only a pool owner the station's owner allowed ({allowInsurer}) can name a station in a season, so nobody else
///   can fill its MAX_SEASONS_PER_STATION slots. Its owner can release it from a season ({releaseStation}) before
///   the season's saleEnd only; it then abstains there.
/// - {finalize} decides the verdict in O(stations) and books the pool once (locked −= coverSold; assets −=
///   coverSold if triggered, owed as {payoutsDue}); {payOut} then pays the policies in pages of the caller's size
///   with bounded pushes that fall back to credits ({PullPayments}), so no payee can stop another's payment and
///   no number of policies can stop a season: there is no cap on policies per season.
/// - With 2 ≤ k ≤ n − 1 a single station, whatever it signs or withholds, cannot change what the other n − 1
///   agree on: alone it is one Trigger vote (< k), and without it n − 1 ≥ k Trigger votes remain.
contract CropInsurance is ICropInsurance, DeviceEventVerifier, PullPayments {
    bytes32 public constant OBSERVATION_TYPEHASH = keccak256(
        "WeatherObservation(address station,uint64 seq,uint64 timestamp,uint64 rainfall,int32 maxTemperature)"
    );

    /// @notice At most this many stations per season (bounds finalization).
    uint256 public constant MAX_STATIONS = 7;
    /// @notice At least this many stations per season, so that k can be ≥ 2 and ≤ n − 1.
    uint256 public constant MIN_STATIONS = 3;
    /// @notice A station serves at most this many unfinalized seasons (bounds the per-observation loop).
    uint256 public constant MAX_SEASONS_PER_STATION = 8;
    /// @notice end − start at most this long; with MAX_SEASON_LEAD and MAX_FINALIZE_DELAY it bounds how long a
    /// season can hold a station's slot.
    uint64 public constant MAX_SEASON_LENGTH = 400 days;
    /// @notice A season may start at most this far after its creation.
    uint64 public constant MAX_SEASON_LEAD = 400 days;
    uint32 public constant MAX_FINALIZE_DELAY = 30 days;
    /// @notice finalizeDelay at least this long: relayers need time after the end to bring each station's last
    /// observations of the window and one dated after the end (which a station needs to vote) on chain. With 0,
    /// whoever finalizes in the end block decides which stations vote. 10 s is one relay batch and a block or two;
    /// a real season wants hours (devices retry over slow links), which is the insurer's choice in the terms.
    uint32 public constant MIN_FINALIZE_DELAY = 10;
    /// @notice coverageSlack at least this long: a station votes only if it reported within the slack of the start
    /// and of the end. With 0 it must report at exactly both instants and a trigger becomes practically
    /// impossible. 10 s covers a station reporting every few seconds; real stations report every 10 to 60 minutes
    /// and need a slack of at least that, which is the insurer's choice in the terms.
    uint32 public constant MIN_COVERAGE_SLACK = 10;
    uint256 public constant BPS = 10_000;
    uint64 private constant _DAY = 1 days;

    uint256 private constant _WEATHER_KINDS = 1 << uint8(IDeviceRegistry.DeviceKind.WeatherStation);

    /// @dev A season's progress; one slot.
    struct SeasonState {
        uint64 poolId;
        bool finalized;
        bool triggered;
        uint8 triggerVotes;
        uint8 noTriggerVotes;
        uint8 abstentions;
        uint64 paidUpTo;
    }

    /// @dev What {record} reads of a season, in one slot (a copy of the terms).
    struct Window {
        uint64 start;
        uint64 end;
        int64 threshold;
        Index index;
    }

    /// @dev The rain part of {StationSeason}: one slot, written by every applied observation.
    struct RainWindow {
        uint64 firstTimestamp;
        uint64 firstRainfall;
        uint64 lastTimestamp;
        uint64 lastRainfall;
    }

    /// @dev Everything {record} touches for a station in the steady state, in one slot: its last accepted
    /// observation and `quietUntil`, the time up to which an observation changes nothing in any of its seasons but
    /// what this slot already says. Below it, each of the station's open seasons either has not started, or has its
    /// first observation recorded and its window still open with a rain index: the season's last observation in the
    /// window is then the station's last one (read lazily, {_stationSeason}), so nothing of the season is read or
    /// written. An observation past `quietUntil` takes the full path over the station's seasons (first observation,
    /// crossing the end, hot days) and sets `quietUntil` again; {createSeason} lowers it to the new start − 1.
    struct StationWord {
        uint64 lastSeq;
        uint64 lastTimestamp;
        uint64 lastRainfall;
        uint64 quietUntil;
    }

    /// @dev The hot-day part of {StationSeason}: written only when a new hot day is counted.
    struct HotDays {
        uint32 count;
        uint64 lastDayPlusOne;
    }

    mapping(uint256 poolId => Pool) private _pools;
    mapping(uint256 seasonId => SeasonTerms) private _terms;
    mapping(uint256 seasonId => SeasonState) private _seasons;
    mapping(uint256 seasonId => Window) private _windows;
    mapping(uint256 seasonId => uint256) private _coverSold;
    mapping(uint256 seasonId => uint256[]) private _policies;
    mapping(uint256 policyId => Cover) private _covers;
    mapping(address station => StationWord) private _stations;
    mapping(address station => uint256[]) private _stationSeasonIds;
    mapping(uint256 seasonId => mapping(address station => RainWindow)) private _rainWindows;
    mapping(uint256 seasonId => mapping(address station => HotDays)) private _hotDays;
    mapping(address token => uint256) private _payoutsDue;
    mapping(uint256 seasonId => mapping(address station => bool)) private _released;
    mapping(address station => mapping(address insurer => bool)) private _allowedInsurers;
    uint64 private _poolCount;
    uint64 private _seasonCount;
    uint64 private _policyCount;

    constructor(IDeviceRegistry registry_) DeviceEventVerifier(registry_) {}

    // ---------------------------------------------------------------- pools

    /// @inheritdoc ICropInsurance
    function createPool(address token) external returns (uint256 poolId) {
        if (token == address(0)) revert ZeroAddress();
        poolId = ++_poolCount;
        _pools[poolId] = Pool({owner: msg.sender, token: token, assets: 0, locked: 0});
        emit PoolCreated(poolId, msg.sender, token);
    }

    /// @inheritdoc ICropInsurance
    function depositToPool(uint256 poolId, uint256 amount) external nonReentrant {
        Pool storage p = _ownedPool(poolId);
        if (amount == 0) revert ZeroAmount();
        p.assets += amount;
        emit PoolDeposited(poolId, amount);
        Funds.pullToken(p.token, amount);
    }

    /// @inheritdoc ICropInsurance
    function withdrawFromPool(uint256 poolId, uint256 amount) external nonReentrant {
        Pool storage p = _ownedPool(poolId);
        if (amount == 0) revert ZeroAmount();
        // locked <= assets always.
        uint256 free = p.assets - p.locked;
        if (amount > free) revert InsufficientFreeAssets(poolId, free, amount);
        p.assets -= amount;
        emit PoolWithdrawn(poolId, amount);
        _guardPayout(p.token, amount); // the account's device guard, as for a credit
        Funds.push(p.token, msg.sender, amount);
    }

    // ---------------------------------------------------------------- seasons and cover

    /// @inheritdoc ICropInsurance
    function createSeason(uint256 poolId, SeasonTerms calldata terms) external returns (uint256 seasonId) {
        _ownedPool(poolId);
        _checkTerms(terms);
        seasonId = ++_seasonCount;
        SeasonTerms storage t = _terms[seasonId];
        t.start = terms.start;
        t.end = terms.end;
        t.saleEnd = terms.saleEnd;
        t.coverageSlack = terms.coverageSlack;
        t.finalizeDelay = terms.finalizeDelay;
        t.index = terms.index;
        t.threshold = terms.threshold;
        t.triggerDays = terms.triggerDays;
        t.premiumBps = terms.premiumBps;
        t.k = terms.k;
        t.region = terms.region;
        t.stations = terms.stations;
        _seasons[seasonId].poolId = uint64(poolId);
        _windows[seasonId] =
            Window({start: terms.start, end: terms.end, threshold: terms.threshold, index: terms.index});
        uint256 n = terms.stations.length;
        for (uint256 i = 0; i < n; ++i) {
            address station = terms.stations[i];
            if (_stationSeasonIds[station].length >= MAX_SEASONS_PER_STATION) revert StationBusy(station);
            _stationSeasonIds[station].push(seasonId);
            // The station's next observation at or after the start takes the full path (its first in the window).
            // _checkTerms: start > lastTimestamp >= 0.
            StationWord storage word = _stations[station];
            if (word.quietUntil >= terms.start) word.quietUntil = terms.start - 1;
        }
        emit SeasonCreated(seasonId, poolId, terms);
    }

    /// @dev Every rule on the terms except the per-station slot limit (checked while taking the slots).
    function _checkTerms(SeasonTerms calldata terms) private view {
        uint64 start = terms.start;
        uint64 end = terms.end;
        if (
            start == 0 || terms.saleEnd > start || start >= end || end - start > MAX_SEASON_LENGTH
                || start > block.timestamp + MAX_SEASON_LEAD
        ) revert InvalidWindow(terms.saleEnd, start, end);
        if (terms.finalizeDelay > MAX_FINALIZE_DELAY) revert FinalizeDelayTooLong(terms.finalizeDelay);
        if (terms.finalizeDelay < MIN_FINALIZE_DELAY) {
            revert FinalizeDelayTooShort(terms.finalizeDelay, MIN_FINALIZE_DELAY);
        }
        if (terms.coverageSlack < MIN_COVERAGE_SLACK) {
            revert CoverageSlackTooShort(terms.coverageSlack, MIN_COVERAGE_SLACK);
        }
        uint256 n = terms.stations.length;
        if (n < MIN_STATIONS || n > MAX_STATIONS || terms.k < 2 || terms.k > n - 1) {
            revert InvalidQuorum(terms.k, n);
        }
        if (terms.premiumBps == 0 || terms.premiumBps > BPS) revert InvalidPremium(terms.premiumBps);
        if (
            (terms.index == Index.RainfallBelow && terms.threshold <= 0)
                || (terms.index == Index.HotDaysAbove && terms.triggerDays == 0)
        ) revert InvalidIndex(terms.index, terms.threshold, terms.triggerDays);
        for (uint256 i = 0; i < n; ++i) {
            address station = terms.stations[i];
            for (uint256 j = 0; j < i; ++j) {
                if (terms.stations[j] == station) revert DuplicateStation(station);
            }
            // The registry is the trusted, immutable contract given at construction; n <= MAX_STATIONS.
            // slither-disable-next-line calls-loop
            IDeviceRegistry.Device memory d = _REGISTRY.deviceOf(station);
            if (d.status != IDeviceRegistry.DeviceStatus.Active || d.kind != IDeviceRegistry.DeviceKind.WeatherStation)
            {
                revert InvalidStation(station);
            }
            // A station's slots are its owner's to give: a stranger cannot fill them with seasons of his own.
            if (!_allowedInsurers[station][msg.sender]) revert StationNotAllowed(station, msg.sender);
            // The season is applied only the observations recorded after its creation: one already recorded inside
            // its window would be missed or not depending on when a relayer brought it.
            uint64 last = _stations[station].lastTimestamp;
            if (last >= start) revert StationReportedSinceStart(station, last);
        }
    }

    /// @inheritdoc ICropInsurance
    function buyCover(uint256 seasonId, uint256 cover, address beneficiary)
        external
        nonReentrant
        returns (uint256 policyId)
    {
        SeasonTerms storage t = _existingSeason(seasonId);
        if (block.timestamp >= t.saleEnd) revert SaleClosed(seasonId, t.saleEnd);
        if (cover == 0) revert ZeroAmount();
        if (beneficiary == address(0)) beneficiary = msg.sender;

        uint256 premium = Math.mulDiv(cover, t.premiumBps, BPS, Math.Rounding.Ceil);
        Pool storage p = _pools[_seasons[seasonId].poolId];
        uint256 assets = p.assets + premium;
        // locked <= assets always.
        uint256 available = assets - p.locked;
        if (cover > available) revert InsufficientCapacity(available);
        p.assets = assets;
        p.locked += cover;
        _coverSold[seasonId] += cover;
        policyId = ++_policyCount;
        _policies[seasonId].push(policyId);
        _covers[policyId] = Cover({
            seasonId: seasonId,
            buyer: msg.sender,
            beneficiary: beneficiary,
            cover: cover,
            premium: premium,
            status: CoverStatus.Active
        });
        emit CoverBought(policyId, seasonId, msg.sender, beneficiary, cover, premium);
        Funds.pullToken(p.token, premium);
    }

    // ---------------------------------------------------------------- observations

    /// @notice Bytes per observation in {record}'s packed batch.
    uint256 public constant PACKED_OBSERVATION_SIZE = 112;

    /// @inheritdoc ICropInsurance
    function record(bytes calldata observations) external returns (uint256 recorded) {
        uint256 len = observations.length;
        if (len % PACKED_OBSERVATION_SIZE != 0) revert MalformedBatch(len);
        // One buffer for every item: {_record} keeps nothing of it.
        SignedObservation memory o;
        for (uint256 p = 0; p < len; p += PACKED_OBSERVATION_SIZE) {
            uint256 head;
            uint256 body;
            bytes32 r;
            bytes32 vs;
            // Item layout (112 bytes): station 20 | seq 8 | timestamp 8 | rainfall 8 | maxTemperature 4 | r 32 |
            // vs 32. Every field has the width of its signed type, so no range check is needed.
            assembly ("memory-safe") {
                let at := add(observations.offset, p)
                head := calldataload(at)
                body := calldataload(add(at, 28))
                r := calldataload(add(at, 48))
                vs := calldataload(add(at, 80))
            }
            o.station = address(uint160(head >> 96));
            o.seq = uint64(head >> 32);
            o.timestamp = uint64(body >> 192);
            o.rainfall = uint64(body >> 128);
            o.maxTemperature = int32(uint32(body >> 96));
            o.r = r;
            o.vs = vs;
            RejectReason reason = _record(o);
            if (reason == RejectReason.None) {
                // Bounded by the batch length.
                unchecked {
                    ++recorded;
                }
            } else {
                emit ObservationRejected(o.station, o.seq, reason);
            }
        }
    }

    /// @dev Checks in order of cost, then moves the station's state and applies the observation to the station's
    /// open seasons. Returns None, or the reason nothing changed.
    function _record(SignedObservation memory o) private returns (RejectReason) {
        address station = o.station;
        uint64 seq = o.seq;
        uint64 ts = o.timestamp;
        uint64 rainfall = o.rainfall;
        // The station's {StationWord} read as one word (one SLOAD). Layout, low bits first, as Solidity packs it:
        // lastSeq 0..63 | lastTimestamp 64..127 | lastRainfall 128..191 | quietUntil 192..255.
        StationWord storage slot = _stations[station];
        uint256 word;
        assembly ("memory-safe") {
            word := sload(slot.slot)
        }
        uint64 lastSeq = uint64(word);
        if (seq <= lastSeq) return RejectReason.Replayed;
        // seq > lastSeq, so lastSeq < 2^64 − 1 and lastSeq + 1 cannot overflow.
        unchecked {
            if (seq != lastSeq + 1) return RejectReason.SequenceGap;
        }
        RejectReason reason = _checkTimestamp(ts, uint64(word >> 64));
        if (reason != RejectReason.None) return reason;
        if (rainfall < uint64(word >> 128)) return RejectReason.CounterRollback;
        reason = _checkSigner(_structHash(o), o.r, o.vs, station, _WEATHER_KINDS, ts);
        if (reason != RejectReason.None) return reason;

        uint256 quietUntil = word >> 192;
        if (ts > quietUntil) {
            quietUntil = _applyToSeasons(
                station,
                StationWord({
                    lastSeq: lastSeq,
                    lastTimestamp: uint64(word >> 64),
                    lastRainfall: uint64(word >> 128),
                    quietUntil: uint64(quietUntil)
                }),
                o
            );
        }
        int256 maxTemperature = o.maxTemperature;
        bytes32 topic = ObservationRecorded.selector;
        assembly ("memory-safe") {
            sstore(slot.slot, or(or(seq, shl(64, ts)), or(shl(128, rainfall), shl(192, quietUntil))))
            // ObservationRecorded(station, seq, ts, rainfall, maxTemperature), its data written to free memory
            // (not allocated: logged at once).
            let fmp := mload(0x40)
            mstore(fmp, seq)
            mstore(add(fmp, 0x20), ts)
            mstore(add(fmp, 0x40), rainfall)
            mstore(add(fmp, 0x60), maxTemperature)
            log2(fmp, 0x80, topic, station)
        }
        return RejectReason.None;
    }

    /// @dev keccak256(abi.encode(OBSERVATION_TYPEHASH, station, seq, timestamp, rainfall, maxTemperature)), built
    /// in free memory (not allocated: hashed at once) instead of a new allocation per observation.
    function _structHash(SignedObservation memory o) private pure returns (bytes32 h) {
        bytes32 typehash = OBSERVATION_TYPEHASH;
        address station = o.station;
        uint64 seq = o.seq;
        uint64 ts = o.timestamp;
        uint64 rainfall = o.rainfall;
        int256 maxTemperature = o.maxTemperature;
        assembly ("memory-safe") {
            let fmp := mload(0x40)
            mstore(fmp, typehash)
            mstore(add(fmp, 0x20), station)
            mstore(add(fmp, 0x40), seq)
            mstore(add(fmp, 0x60), ts)
            mstore(add(fmp, 0x80), rainfall)
            mstore(add(fmp, 0xa0), maxTemperature)
            h := keccak256(fmp, 0xc0)
        }
    }

    /// @dev The full path: apply the observation to each of the station's open seasons and return the new
    /// `quietUntil` (see {StationWord}). `prev` is the station's state before the observation.
    function _applyToSeasons(address station, StationWord memory prev, SignedObservation memory o)
        private
        returns (uint64 quietUntil)
    {
        quietUntil = type(uint64).max;
        uint256[] storage ids = _stationSeasonIds[station];
        uint256 m = ids.length;
        for (uint256 i = 0; i < m; ++i) {
            uint64 bound = _apply(ids[i], station, prev, o);
            if (bound < quietUntil) quietUntil = bound;
        }
    }

    /// @dev Accumulate one accepted observation into (season, station) if the season's window holds it, write back
    /// the season's last observation in the window when this one is the first past its end, and return the time up
    /// to which the station's next observations can skip this season. Timestamps of a station never go back, so
    /// "first" is set once and a hot day is counted once.
    function _apply(uint256 seasonId, address station, StationWord memory prev, SignedObservation memory o)
        private
        returns (uint64)
    {
        Window memory w = _windows[seasonId];
        uint64 ts = o.timestamp;
        // start > 0 (_checkTerms).
        if (ts < w.start) return w.start - 1;
        if (ts > w.end) {
            // The last observation in the window was the station's previous one, kept only in the station's word
            // until now: store it with the season.
            RainWindow storage past = _rainWindows[seasonId][station];
            if (past.firstTimestamp != 0 && prev.lastTimestamp <= w.end && past.lastTimestamp != prev.lastTimestamp) {
                past.lastTimestamp = prev.lastTimestamp;
                past.lastRainfall = prev.lastRainfall;
            }
            return type(uint64).max;
        }
        RainWindow memory rw = _rainWindows[seasonId][station];
        if (rw.firstTimestamp == 0) {
            rw.firstTimestamp = ts;
            rw.firstRainfall = o.rainfall;
        }
        rw.lastTimestamp = ts;
        rw.lastRainfall = o.rainfall;
        _rainWindows[seasonId][station] = rw;
        if (w.index == Index.HotDaysAbove) {
            if (o.maxTemperature >= w.threshold) {
                HotDays storage hot = _hotDays[seasonId][station];
                // ts < 2^64, so ts / 1 day + 1 cannot overflow.
                uint64 dayPlusOne;
                unchecked {
                    dayPlusOne = ts / _DAY + 1;
                }
                if (hot.lastDayPlusOne != dayPlusOne) {
                    // At most one per day of a season of at most MAX_SEASON_LENGTH: cannot overflow.
                    hot.count += 1;
                    hot.lastDayPlusOne = dayPlusOne;
                }
            }
            // Every observation of a hot-day window is looked at (ts >= start > 0).
            return 0;
        }
        return w.end;
    }

    /// @inheritdoc ICropInsurance
    function allowInsurer(address station, address insurer, bool allowed) external {
        if (insurer == address(0)) revert ZeroAddress();
        if (_REGISTRY.deviceOf(station).owner != msg.sender) revert NotStationOwner(station, msg.sender);
        _allowedInsurers[station][insurer] = allowed;
        emit InsurerAllowed(station, insurer, allowed);
    }

    /// @inheritdoc ICropInsurance
    function releaseStation(uint256 seasonId, address station) external {
        uint64 saleEnd = _existingSeason(seasonId).saleEnd;
        // Also covers finalized seasons: finalize needs end + finalizeDelay > saleEnd.
        if (block.timestamp >= saleEnd) revert ReleaseClosed(seasonId, saleEnd);
        if (_REGISTRY.deviceOf(station).owner != msg.sender) revert NotStationOwner(station, msg.sender);
        if (!_releaseStation(station, seasonId)) revert StationNotInSeason(seasonId, station);
        _released[seasonId][station] = true;
        emit StationReleased(seasonId, station);
    }

    // ---------------------------------------------------------------- finalization and payouts

    /// @inheritdoc ICropInsurance
    function finalize(uint256 seasonId) external nonReentrant {
        SeasonTerms storage t = _existingSeason(seasonId);
        SeasonState storage s = _seasons[seasonId];
        if (s.finalized) revert AlreadyFinalized(seasonId);
        uint256 finalizableAt = uint256(t.end) + t.finalizeDelay;
        if (block.timestamp < finalizableAt) revert TooEarly(seasonId, finalizableAt, block.timestamp);

        uint8 triggerVotes = 0;
        uint8 noTriggerVotes = 0;
        uint8 abstentions = 0;
        uint256 n = t.stations.length;
        for (uint256 i = 0; i < n; ++i) {
            address station = t.stations[i];
            (Verdict verdict, int256 measured) = _verdict(t, seasonId, station);
            // n <= MAX_STATIONS, so no counter overflows.
            unchecked {
                if (verdict == Verdict.Trigger) ++triggerVotes;
                else if (verdict == Verdict.NoTrigger) ++noTriggerVotes;
                else ++abstentions;
            }
            // A station its owner released already gave its slot back.
            _releaseStation(station, seasonId);
            emit StationVerdict(seasonId, station, verdict, measured);
        }
        bool triggered = triggerVotes >= t.k;
        s.finalized = true;
        s.triggered = triggered;
        s.triggerVotes = triggerVotes;
        s.noTriggerVotes = noTriggerVotes;
        s.abstentions = abstentions;
        // The pool is booked once for every policy of the season; the payouts themselves follow in {payOut}.
        uint256 sold = _coverSold[seasonId];
        Pool storage p = _pools[s.poolId];
        // Σ cover of the season's policies <= locked <= assets.
        p.locked -= sold;
        if (triggered) {
            p.assets -= sold;
            _payoutsDue[p.token] += sold;
        } else {
            // Nothing to pay: every policy expired with the verdict.
            s.paidUpTo = uint64(_policies[seasonId].length);
        }
        emit SeasonFinalized(seasonId, triggered, triggerVotes, noTriggerVotes, abstentions);
    }

    /// @inheritdoc ICropInsurance
    function payOut(uint256 seasonId, uint256 maxPolicies) external nonReentrant returns (uint256 processed) {
        _existingSeason(seasonId);
        SeasonState storage s = _seasons[seasonId];
        if (!s.finalized) revert NotFinalized(seasonId);
        uint256[] storage policies = _policies[seasonId];
        uint256 from = s.paidUpTo;
        uint256 to = policies.length;
        if (to - from > maxPolicies) to = from + maxPolicies;
        if (to == from) return 0;
        // Effects of the whole page first (statuses, cursor, what is due), then the events and the bounded pushes.
        s.paidUpTo = uint64(to); // <= the number of policies, itself <= 2^64 (policy ids are uint64)
        uint256 total = 0;
        for (uint256 i = from; i < to; ++i) {
            Cover storage c = _covers[policies[i]];
            c.status = CoverStatus.Paid;
            total += c.cover;
        }
        address token = _pools[s.poolId].token;
        // These covers were added to payoutsDue when the season finalized triggered (paidUpTo starts at the end
        // for an untriggered one, so this is never reached for it).
        _payoutsDue[token] -= total;
        for (uint256 i = from; i < to; ++i) {
            uint256 policyId = policies[i];
            Cover storage c = _covers[policyId];
            address beneficiary = c.beneficiary;
            uint256 amount = c.cover;
            emit PayoutSent(policyId, beneficiary, amount);
            // One bounded push per policy is the product: a payee that reverts or burns gas is credited instead.
            // The guard is held and every effect of the page is already written.
            // slither-disable-next-line calls-loop,reentrancy-no-eth,reentrancy-benign,reentrancy-events
            _pay(token, beneficiary, amount);
        }
        return to - from;
    }

    // ---------------------------------------------------------------- views

    /// @inheritdoc ICropInsurance
    function poolOf(uint256 poolId) external view returns (Pool memory) {
        return _pools[poolId];
    }

    /// @inheritdoc ICropInsurance
    function seasonOf(uint256 seasonId) external view returns (Season memory) {
        SeasonState memory s = _seasons[seasonId];
        return Season({
            terms: _terms[seasonId],
            poolId: s.poolId,
            finalized: s.finalized,
            triggered: s.triggered,
            triggerVotes: s.triggerVotes,
            noTriggerVotes: s.noTriggerVotes,
            abstentions: s.abstentions,
            policies: _policies[seasonId].length,
            paidUpTo: s.paidUpTo,
            coverSold: _coverSold[seasonId]
        });
    }

    /// @inheritdoc ICropInsurance
    function coverOf(uint256 policyId) external view returns (Cover memory c) {
        c = _covers[policyId];
        if (c.status == CoverStatus.Active) {
            SeasonState memory s = _seasons[c.seasonId];
            if (s.finalized) c.status = s.triggered ? CoverStatus.Due : CoverStatus.Expired;
        }
    }

    /// @inheritdoc ICropInsurance
    function stationSeason(uint256 seasonId, address station) external view returns (StationSeason memory) {
        return _stationSeason(seasonId, station);
    }

    /// @inheritdoc ICropInsurance
    function stationState(address station) external view returns (StationState memory) {
        StationWord memory word = _stations[station];
        return StationState({lastSeq: word.lastSeq, lastTimestamp: word.lastTimestamp, lastRainfall: word.lastRainfall});
    }

    /// @inheritdoc ICropInsurance
    function seasonsOfStation(address station) external view returns (uint256[] memory) {
        return _stationSeasonIds[station];
    }

    /// @inheritdoc ICropInsurance
    function insurerAllowed(address station, address insurer) external view returns (bool) {
        return _allowedInsurers[station][insurer];
    }

    /// @inheritdoc ICropInsurance
    function policiesOf(uint256 seasonId) external view returns (uint256[] memory) {
        return _policies[seasonId];
    }

    /// @inheritdoc ICropInsurance
    function payoutsDue(address token) external view returns (uint256) {
        return _payoutsDue[token];
    }

    /// @inheritdoc ICropInsurance
    function verdictOf(uint256 seasonId, address station) external view returns (Verdict verdict, int256 measured) {
        return _verdict(_existingSeason(seasonId), seasonId, station);
    }

    /// @inheritdoc ICropInsurance
    function hashObservation(address station, uint64 seq, uint64 timestamp, uint64 rainfall, int32 maxTemperature)
        external
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(
            keccak256(abi.encode(OBSERVATION_TYPEHASH, station, seq, timestamp, rainfall, maxTemperature))
        );
    }

    // ---------------------------------------------------------------- internals

    /// @dev The station verdict rule (see the contract notice). Sums in uint256: no overflow for any uint64 input.
    function _verdict(SeasonTerms storage t, uint256 seasonId, address station) private view returns (Verdict, int256) {
        StationSeason memory ss = _stationSeason(seasonId, station);
        uint256 slack = t.coverageSlack;
        // The station must also be known to have reported after the end: with gapless seqs and non-decreasing
        // timestamps the contract then holds every observation of its window, so no withheld one can change it.
        if (
            _released[seasonId][station] || ss.firstTimestamp == 0
                || uint256(ss.firstTimestamp) > uint256(t.start) + slack || uint256(ss.lastTimestamp) + slack < t.end
                || _stations[station].lastTimestamp <= t.end
        ) return (Verdict.Abstain, 0);
        if (t.index == Index.RainfallBelow) {
            // The register never goes back, so last >= first.
            int256 rain = int256(uint256(ss.lastRainfall - ss.firstRainfall));
            return (rain < t.threshold ? Verdict.Trigger : Verdict.NoTrigger, rain);
        }
        return (ss.hotDays >= t.triggerDays ? Verdict.Trigger : Verdict.NoTrigger, int256(uint256(ss.hotDays)));
    }

    function _stationSeason(uint256 seasonId, address station) private view returns (StationSeason memory) {
        RainWindow memory rw = _rainWindows[seasonId][station];
        HotDays memory hot = _hotDays[seasonId][station];
        // While the station serves the season (neither finalized nor released) and has not reported past its end,
        // the season's last observation in the window is the station's last one ({StationWord}).
        StationWord memory word = _stations[station];
        if (
            rw.firstTimestamp != 0 && word.lastTimestamp <= _windows[seasonId].end && !_seasons[seasonId].finalized
                && !_released[seasonId][station]
        ) {
            rw.lastTimestamp = word.lastTimestamp;
            rw.lastRainfall = word.lastRainfall;
        }
        return StationSeason({
            firstTimestamp: rw.firstTimestamp,
            firstRainfall: rw.firstRainfall,
            lastTimestamp: rw.lastTimestamp,
            lastRainfall: rw.lastRainfall,
            hotDays: hot.count,
            lastHotDay: hot.lastDayPlusOne
        });
    }

    /// @dev Free the station's slot for the season (swap with the last, pop); false if it held none.
    function _releaseStation(address station, uint256 seasonId) private returns (bool) {
        uint256[] storage ids = _stationSeasonIds[station];
        uint256 m = ids.length;
        for (uint256 i = 0; i < m; ++i) {
            if (ids[i] == seasonId) {
                ids[i] = ids[m - 1];
                ids.pop();
                // The season's last observation in the window may still live only in the station's word.
                RainWindow storage rw = _rainWindows[seasonId][station];
                StationWord memory word = _stations[station];
                if (rw.firstTimestamp != 0 && word.lastTimestamp <= _windows[seasonId].end) {
                    rw.lastTimestamp = word.lastTimestamp;
                    rw.lastRainfall = word.lastRainfall;
                }
                return true;
            }
        }
        return false;
    }

    function _ownedPool(uint256 poolId) private view returns (Pool storage p) {
        p = _pools[poolId];
        if (p.owner == address(0)) revert UnknownPool(poolId);
        if (p.owner != msg.sender) revert NotPoolOwner(poolId, msg.sender);
    }

    function _existingSeason(uint256 seasonId) private view returns (SeasonTerms storage t) {
        t = _terms[seasonId];
        if (t.end == 0) revert UnknownSeason(seasonId);
    }
}
