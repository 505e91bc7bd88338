"""Bad input against the running daemon process (docs/RELIABILITY.md, item 9), generated with hypothesis:
malformed bytes and JSON, wrong types, oversize payloads, bad and malleable signatures, unknown devices, wrong
EIP-712 domains (chain, contract, name, version, type string). Every one is answered "rejected" with its reason,
counted under that reason in /metrics and logged; none is stored for settlement or paid; the daemon stays up and
still settles the honest readings sent between the attacks.

Examples per run: 120 by default, ``IOTSETTLE_FUZZ_EXAMPLES`` (or ``--runslow``: 1,000) for more.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections import Counter
from typing import Any

import pytest
from eth_abi import encode as abi_encode
from eth_hash.auto import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iotsettle.oracle.daemon.store import Store
from iotsettle.oracle.protocol import eip712, wire
from iotsettle.oracle.testing.devices import Publisher

from tests.kit.devices import Device
from tests.kit.reliability import Fleet, labelled, metrics, summary
from tests.kit.settlement import PRICE, START

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

#: what each class of bad input may be answered with (the first code that applies wins inside the daemon)
ALLOWED = {
    "garbage": {"malformed"},
    "not_json_object": {"malformed"},
    "wrong_type": {"malformed", "bad_signature", "topic_mismatch", "wrong_chain", "wrong_contract", "unknown_device"},
    "oversize": {"oversize"},
    "bad_signature": {"bad_signature", "malformed"},
    "unknown_device": {"unknown_device"},
    "wrong_domain": {"wrong_chain", "wrong_contract", "bad_signature"},
    "topic_mismatch": {"topic_mismatch"},
}


def _payload(event: bytes) -> dict[str, Any]:
    return json.loads(event)  # type: ignore[no-any-return]


def _with_sig(event: bytes, sig: bytes) -> bytes:
    body = _payload(event)
    body["sig"] = "0x" + sig.hex()
    return json.dumps(body).encode()


def bad_inputs(victim: Device, agreement: int, timestamp: int) -> st.SearchStrategy[tuple[str, str, bytes]]:
    """(class, topic, payload) triples; every payload must be refused."""
    chain_id = victim.chain_id
    billing = victim.contracts["reading"]
    json_values = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(allow_nan=False),
        st.integers(),
        st.text(max_size=12),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    )
    seqs = st.integers(1_000, 2**40)

    def signed(seq: int, key: bytes | None = None, device: Device | None = None, **domain: Any) -> bytes:
        dev = device or victim
        msg = {"agreementId": agreement, "seq": seq, "timestamp": timestamp, "value": START + 1}
        dom = eip712.Domain(
            domain.get("chain_id", chain_id),
            domain.get("contract", billing),
            domain.get("name", eip712.DOMAIN_NAME),
            domain.get("version", eip712.DOMAIN_VERSION),
        )
        sig = eip712.sign_digest(key or dev.key, eip712.digest("Reading", msg, dom))
        return wire.encode("reading", dom.chain_id, dom.verifying_contract, dev.address, msg, sig)

    garbage = st.binary(max_size=400).map(lambda b: ("garbage", victim.topic, b))
    not_object = json_values.map(lambda v: ("not_json_object", victim.topic, json.dumps(v).encode()))

    @st.composite
    def wrong_type(draw: st.DrawFn) -> tuple[str, str, bytes]:
        # an unregistered key signs, so even a mutation that still decodes to a valid event is refused
        stranger = Device(chain_id=chain_id, contracts=dict(victim.contracts))
        body = _payload(signed(draw(seqs), device=stranger))
        where = draw(st.sampled_from(["top", "msg"]))
        target = body if where == "top" else body["msg"]
        key = draw(st.sampled_from(sorted(target)))
        value = draw(json_values.filter(lambda v: v != target[key]))
        if draw(st.booleans()):
            target[key] = value
        else:
            del target[key]
            target[draw(st.text(min_size=1, max_size=8))] = value
        return "wrong_type", stranger.topic, json.dumps(body).encode()

    oversize = st.integers(wire.MAX_PAYLOAD_BYTES + 1, 8 * wire.MAX_PAYLOAD_BYTES).map(
        lambda n: ("oversize", victim.topic, b'{"v":1,"pad":"' + b"x" * n + b'"}')
    )

    @st.composite
    def bad_signature(draw: st.DrawFn) -> tuple[str, str, bytes]:
        event = signed(draw(seqs))
        sig = bytes.fromhex(_payload(event)["sig"][2:])
        r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
        how = draw(st.sampled_from(["flip", "high_s", "v01", "compact", "random", "short", "zero"]))
        if how == "flip":
            index, bit = draw(st.integers(0, 63)), draw(st.integers(0, 7))
            bad = bytearray(sig)
            bad[index] ^= 1 << bit
            sig = bytes(bad)
        elif how == "high_s":
            sig = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])
        elif how == "v01":
            sig = r + s.to_bytes(32, "big") + bytes([v - 27])
        elif how == "compact":
            sig = r + (s | ((v - 27) << 255)).to_bytes(32, "big")
        elif how == "random":
            sig = draw(st.binary(min_size=65, max_size=65))
        elif how == "short":
            sig = sig[: draw(st.integers(0, 64))]
        else:
            sig = bytes(65)
        return "bad_signature", victim.topic, _with_sig(event, sig)

    unknown = seqs.map(lambda seq: ("unknown_device", *_stranger(seq)))

    def _stranger(seq: int) -> tuple[str, bytes]:
        stranger = Device(chain_id=chain_id, contracts=dict(victim.contracts))
        return stranger.topic, signed(seq, device=stranger)

    @st.composite
    def wrong_domain(draw: st.DrawFn) -> tuple[str, str, bytes]:
        seq = draw(seqs)
        how = draw(st.sampled_from(["chain", "contract", "name", "version", "type"]))
        if how == "chain":
            return (
                "wrong_domain",
                victim.topic,
                signed(seq, chain_id=draw(st.integers(1, 2**32).filter(lambda c: c != chain_id))),
            )
        if how == "contract":
            other = "0x" + draw(st.binary(min_size=20, max_size=20)).hex()
            return "wrong_domain", victim.topic, signed(seq, contract=other)
        if how in ("name", "version"):
            text = draw(
                st.text(min_size=1, max_size=10).filter(lambda t: t not in (eip712.DOMAIN_NAME, eip712.DOMAIN_VERSION))
            )
            event = signed(seq, **{how: text})
            # the payload names the real domain (only name/version differ, and they are not on the wire)
            return "wrong_domain", victim.topic, event
        # the same fields under another type string: a signature for some other struct
        msg = (agreement, seq, timestamp, START + 1)
        type_hash = keccak(b"Reading(uint256 agreementId,uint64 seq,uint64 timestamp,uint256 amount)")
        struct = keccak(type_hash + abi_encode(["uint256", "uint64", "uint64", "uint256"], list(msg)))
        digest = keccak(b"\x19\x01" + eip712.domain_separator(eip712.Domain(chain_id, billing)) + struct)
        return "wrong_domain", victim.topic, _with_sig(signed(seq), eip712.sign_digest(victim.key, digest))

    @st.composite
    def topic_mismatch(draw: st.DrawFn) -> tuple[str, str, bytes]:
        other = Device(chain_id=chain_id, contracts=dict(victim.contracts))
        return "topic_mismatch", other.topic, signed(draw(seqs))

    # one class first, then an example of it: every class gets its share (one_of favours the first ones)
    classes = [garbage, not_object, wrong_type(), oversize, bad_signature(), unknown, wrong_domain(), topic_mismatch()]
    return st.sampled_from(classes).flatmap(lambda strategy: strategy)


@pytest.mark.timeout(900)  # 1,000 examples with --runslow take about 3 minutes
def test_bad_input_is_rejected_counted_logged_never_stored_and_the_daemon_stays_up(
    setup: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    fleet: Fleet = setup["fleet"]
    process = setup["daemon"]
    publisher: Publisher = setup["publisher"]
    honest, victim = fleet.meters
    default = 1_000 if request.config.getoption("--runslow") else 120
    examples = int(os.environ.get("IOTSETTLE_FUZZ_EXAMPLES", default))
    tried: Counter[str] = Counter()
    answered: Counter[str] = Counter()
    honest_seq = [0]

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=bad_inputs(victim.device, victim.agreement, fleet.timestamp()))
    def one_bad_input(case: tuple[str, str, bytes]) -> None:
        kind, topic, payload = case
        publisher.publish(topic, payload)
        ((_, reply),) = publisher.collect(1, timeout=10)
        assert reply["status"] == "rejected", f"{kind} {payload[:200]!r} was answered {reply}"
        assert reply["reason"] in ALLOWED[kind], f"{kind} {payload[:200]!r} answered with reason {reply['reason']}"
        tried[kind] += 1
        answered[reply["reason"]] += 1
        if sum(tried.values()) % 40 == 0:  # honest traffic between the attacks keeps being settled
            honest_seq[0] += 1
            body = _publish_one(publisher, fleet, honest, honest_seq[0])
            assert body["status"] == "accepted", body

    # every field of a payload replaced by every JSON type, once each, before the random examples
    stranger = Device(chain_id=victim.device.chain_id, contracts=dict(victim.device.contracts))
    base = _payload(stranger.reading(7, START + 1, timestamp=fleet.started, agreement=victim.agreement))
    for path in [(key,) for key in base] + [("msg", key) for key in base["msg"]]:
        for value in ([], [1], {}, {"a": 1}, None, True, 1.5, "x", -1, 2**64):
            body = json.loads(json.dumps(base))
            (body if len(path) == 1 else body["msg"])[path[-1]] = value
            publisher.publish(stranger.topic, json.dumps(body).encode())
            ((_, reply),) = publisher.collect(1, timeout=10)
            assert reply["status"] == "rejected" and reply["reason"] in ALLOWED["wrong_type"], (path, value, reply)
            tried["wrong_type"] += 1
            answered[reply["reason"]] += 1

    one_bad_input()
    honest_seq[0] += 1
    assert _publish_one(publisher, fleet, honest, honest_seq[0])["status"] == "accepted"

    assert process.proc is not None and process.proc.poll() is None, "the daemon is still running"
    samples = metrics(process)
    rejected = labelled(samples, "iotsettle_oracle_rejected_total")
    total = sum(tried.values())
    assert {reason: int(count) for reason, count in rejected.items() if count} == dict(answered), (
        "each rejection counted under its reason"
    )
    logged = Counter(
        re.findall(r"INFO iotsettle\.oracle\.daemon\.intake\.pipeline: rejected (\w+) on ", process.log.read_text())
    )
    assert dict(logged) == dict(answered), "each rejection logged with its reason"

    store = Store.open(process.db)
    try:
        stored = store.event_count()
        stored_devices = {e.device for e in store.events_of_device(victim.device.address)}
        audit_rows, largest = store.conn.execute("SELECT COUNT(*), MAX(LENGTH(payload)) FROM rejected").fetchone()
    finally:
        store.close()
    assert audit_rows == total, "each rejection is in the audit table"
    assert largest <= wire.MAX_PAYLOAD_BYTES, f"an oversize payload was kept whole ({largest} bytes)"
    assert stored == honest_seq[0], "only the honest readings are stored for settlement"
    assert not stored_devices
    ledger = fleet.wait_paid(30)
    assert fleet.scenario.earnings(victim) == 0 and ledger.double == 0
    assert (
        fleet.scenario.earnings(honest)
        == (max(v for (a, _), v in fleet.sent.items() if a == honest.agreement) - START) * PRICE
    )
    process.signal(signal.SIGTERM)
    assert process.wait(60) == 0
    summary(
        "bad-input",
        tried=total,
        **{f"tried_{k}": v for k, v in sorted(tried.items())},
        stored=0,
        paid_from_bad=fleet.scenario.earnings(victim),
        honest_paid=honest_seq[0],
        daemon_up=1,
    )


def _publish_one(publisher: Publisher, fleet: Fleet, meter: Any, seq: int) -> dict[str, Any]:
    ((topic, payload),) = fleet.readings(seq, meters=[meter], timestamp=fleet.started + seq)
    publisher.publish(topic, payload)
    ((_, reply),) = publisher.collect(1, timeout=10)
    return reply


def test_log_lines_name_the_reason(setup: dict[str, Any]) -> None:
    """Operators grep the log: a rejection line says which reason and which topic."""
    text = setup["daemon"].log.read_text()
    assert re.search(r"rejected (malformed|oversize|bad_signature) on iotsettle/v1/\d+/0x[0-9a-fA-F]{40}/events", text)
    assert "Traceback" not in text
