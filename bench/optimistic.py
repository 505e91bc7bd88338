"""Gas per reading in optimistic mode (OptimisticBilling), from receipts on the bench chain, beside direct mode;
and the same for telematics reports (OptimisticMotor, ``telematics_optimistic``: a report every 36 s per vehicle,
100 per policy per window, the vehicles' registers growing and a harsh-braking event every tenth report).

A relayer commits a batch of signed readings (``batch_tree.pack_batch``: the agreement table and 82 bytes per
reading) with the deployment's bond; after the deployment's challenge window (the chain's clock moved on with
``evm_increaseTime``) the newest reading of each agreement is claimed: one claim per agreement per window. With a
meter reading every 36 s and a window of one hour, that is 100 readings per agreement per window, so a batch of 100
readings is one agreement and a batch of 1,000 is ten. The figure per reading is (commit gas + claim gas) ÷ readings,
every transaction's gas from its receipt; each claim is checked to have billed its agreement.

Then one leaf challenge: a batch of 1,000 with one reading signed by an unregistered key, challenged by a watcher
(half the bond to it, half burnt), and its gas from the receipt. The latency to money of this mode is the window
(plus a claim), read from the contract.

Calldata pricing decides the figure. The bench node runs anvil's latest rules (Prague), where EIP-7623 charges a
data-heavy transaction at least 10 gas per calldata token (40 per non-zero byte) — a commit is one: its 64 bytes
of signature per reading alone cost 2,560 there. The same phase also runs on an anvil with Cancun's rules
(EIP-2028 alone: 16 per non-zero byte, 4 per zero byte, as the forge gas test prices it); each entry carries both
(``per_event`` from the bench node, ``per_event_eip2028`` from the Cancun node).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from iotsettle.oracle.chain.connection import connect
from iotsettle.oracle.chain.deploy import deploy_all
from iotsettle.oracle.chain.node import Anvil, free_port
from iotsettle.oracle.ops import billing, token
from iotsettle.oracle.protocol import batch_tree, device_kinds, eip712
from iotsettle.oracle.protocol.errors import IotSettleError

from bench.rawsend import Encoder, RawSender, topic_ints
from bench.stack import CONSUMER, DEPLOYER, PRICE_PER_UNIT, PROVIDER, BenchStack, _register, bench_config, topic_of

log = logging.getLogger(__name__)

CONTRACT = "OptimisticBilling"
KIND = "reading_optimistic"
MOTOR = "OptimisticMotor"
MOTOR_KIND = "telematics_optimistic"
#: per km at factor 1.0, in TEST base units; factor bounds 1.0–2.0, +5 % per event per 100 km
RATE_PER_KM = 10**15
BATCHES = (100, 1_000)
#: one reading every 36 s over a one-hour window
READINGS_PER_AGREEMENT = 100
START_VALUE = 1_000
DEPOSIT = 10**22


@dataclass(frozen=True)
class OptimisticFigure:
    batch: int
    agreements: int
    commit_gas: int
    claim_gas: int
    kind: str = KIND

    @property
    def per_event(self) -> int:
        return round((self.commit_gas + self.claim_gas) / self.batch)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "batch": self.batch,
            "events": self.batch,
            "transactions": 1 + self.agreements,
            "agreements": self.agreements,
            "readings_per_agreement": self.batch // self.agreements,
            "commit_gas": self.commit_gas,
            "claim_gas": self.claim_gas,
            "commit_per_event": round(self.commit_gas / self.batch),
            "claim_per_event": round(self.claim_gas / self.batch),
            "per_event": self.per_event,
            "first": False,
        }


@dataclass
class _Agreement:
    key: bytes
    agreement_id: int


def _open(stack: BenchStack, count: int) -> list[_Agreement]:
    """``count`` registered meters, each with an accepted, funded optimistic agreement at a flat tariff."""
    provider, consumer = stack.ctx(PROVIDER), stack.ctx(CONSUMER)
    owner, buyer = provider.require_sender(), consumer.require_sender()
    keys = [os.urandom(32) for _ in range(count)]
    _register(stack, keys, device_kinds.DeviceKind.METER)
    tariff, _ = billing.create_flat_tariff(provider, PRICE_PER_UNIT)
    test = token.describe_token(provider, token.TEST)
    token.mint(consumer, buyer.address, DEPOSIT * count)
    token.ensure_allowance(consumer, test, CONTRACT, DEPOSIT * count)
    opt = provider.contract(CONTRACT)
    encoder = Encoder(opt)
    rpc, chain_id = stack.config.chain.rpc_url, stack.chain.chain_id
    offers = [
        encoder.call("offer", buyer.address, eip712.address_of(k), tariff, test.address, START_VALUE, 0, gas=300_000)
        for k in keys
    ]
    offered = topic_of(opt, "AgreementOffered")
    ids = [topic_ints(r, opt.address, offered)[0] for r in RawSender(rpc, chain_id, owner).send_many(offers)]
    RawSender(rpc, chain_id, buyer).send_many(
        [encoder.call("accept", i, DEPOSIT, START_VALUE, gas=300_000) for i in ids]
    )
    return [_Agreement(k, i) for k, i in zip(keys, ids, strict=True)]


def _open_policies(stack: BenchStack, count: int) -> list[_Agreement]:
    """``count`` registered vehicles, each with an accepted, funded OptimisticMotor policy."""
    insurer, holder = stack.ctx(PROVIDER), stack.ctx(CONSUMER)
    owner, buyer = insurer.require_sender(), holder.require_sender()
    keys = [os.urandom(32) for _ in range(count)]
    _register(stack, keys, device_kinds.DeviceKind.VEHICLE)
    test = token.describe_token(insurer, token.TEST)
    token.mint(holder, buyer.address, DEPOSIT * count)
    token.ensure_allowance(holder, test, MOTOR, DEPOSIT * count)
    om = insurer.contract(MOTOR)
    encoder = Encoder(om)
    rpc, chain_id = stack.config.chain.rpc_url, stack.chain.chain_id
    terms = (RATE_PER_KM, 10_000, 20_000, 500, START_VALUE, 0, 0, 0)
    offers = [
        encoder.call("offer", buyer.address, eip712.address_of(k), test.address, *terms, gas=500_000) for k in keys
    ]
    offered = topic_of(om, "PolicyOffered")
    ids = [topic_ints(r, om.address, offered)[0] for r in RawSender(rpc, chain_id, owner).send_many(offers)]
    RawSender(rpc, chain_id, buyer).send_many(
        [encoder.call("accept", i, DEPOSIT, START_VALUE, 0, 0, gas=300_000) for i in ids]
    )
    return [_Agreement(k, i) for k, i in zip(keys, ids, strict=True)]


def _stream_reports(stack: BenchStack, policies: list[_Agreement], n: int, domain: eip712.Domain) -> list[bytes]:
    """``n`` reports over ``policies``, interleaved, dated over the hour before now (the newest last), each with its
    policy's sealed terms (as the relayer sends them)."""
    om = stack.ctx_contract(MOTOR)
    terms = {p.agreement_id: bytes(om.functions.telematicsTerms(p.agreement_id).call()) for p in policies}
    now = stack.chain_now()
    out = []
    for i in range(n):
        p, s = policies[i % len(policies)], i // len(policies)
        message = {
            "policyId": p.agreement_id,
            "seq": s + 1,
            "timestamp": now - 3_600 + (i * 3_600) // n,
            "odometer": START_VALUE + 250 * (s + 1),
            "harshBraking": (s + 1) // 10,
            "speeding": 0,
        }
        out.append(batch_tree.sign_telematics(p.key, domain, message, terms[p.agreement_id]))
    return out


def _advance(stack: BenchStack, seconds: int) -> None:
    stack.w3.provider.make_request("evm_increaseTime", [seconds])
    stack.w3.provider.make_request("evm_mine", [])


def _stream(stack: BenchStack, agreements: list[_Agreement], n: int, domain: eip712.Domain) -> list[bytes]:
    """``n`` readings over ``agreements``, interleaved, dated over the hour before now (the newest last)."""
    now = stack.chain_now()
    out = []
    for i in range(n):
        a, s = agreements[i % len(agreements)], i // len(agreements)
        when = now - 3_600 + (i * 3_600) // n
        out.append(batch_tree.sign_reading(a.key, domain, a.agreement_id, s + 1, when, START_VALUE + 7 * (s + 1)))
    return out


def _commit(
    sender: RawSender, encoder: Encoder, readings: list[bytes], domain: eip712.Domain, bond: int, kind: str = "reading"
) -> Any:
    leaves = [batch_tree.leaf(r, domain, kind) for r in readings]
    data = batch_tree.pack_batch(readings, kind)
    receipt = sender.send_many([encoder.call("commit", batch_tree.root(leaves), data, gas=5_000_000, value=bond)])[0]
    return receipt, leaves


def measure_optimistic(stack: BenchStack, relayer: LocalAccount) -> tuple[list[OptimisticFigure], dict[str, Any]]:
    """The gas figures per batch size, and the mode's other figures: one leaf challenge's gas, the window and
    the bond of the deployment. Moves the chain's clock forward by a window and an hour per batch size."""
    opt = stack.ctx_contract(CONTRACT)
    encoder = Encoder(opt)
    domain = eip712.Domain(stack.chain.chain_id, opt.address)
    window, bond = int(opt.functions.CHALLENGE_WINDOW().call()), int(opt.functions.BOND().call())
    sender = RawSender(stack.config.chain.rpc_url, stack.chain.chain_id, relayer)
    committed, claimed = topic_of(opt, "BatchCommitted"), topic_of(opt, "ReadingClaimed")
    figures = []
    for batch in BATCHES:
        agreements = _open(stack, max(1, batch // READINGS_PER_AGREEMENT))
        _advance(stack, 3_600)
        readings = _stream(stack, agreements, batch, domain)
        receipt, leaves = _commit(sender, encoder, readings, domain, bond)
        batch_id = topic_ints(receipt, opt.address, committed)[0]
        _advance(stack, window + 1)
        newest = range(batch - len(agreements), batch)
        claims = sender.send_many(
            [encoder.call("claim", batch_id, readings[i], batch_tree.proof(leaves, i), gas=400_000) for i in newest]
        )
        billed = sorted(i for r in claims for i in topic_ints(r, opt.address, claimed))
        if billed != sorted(a.agreement_id for a in agreements):
            raise IotSettleError(f"optimistic gas phase: {len(billed)} of {len(agreements)} claims billed")
        figure = OptimisticFigure(
            batch,
            len(agreements),
            int(receipt["gasUsed"], 16),
            sum(int(r["gasUsed"], 16) for r in claims),
        )
        figures.append(figure)
        log.info("gas %s batch %d: %d per reading", KIND, batch, figure.per_event)

    # One leaf challenge in a batch of 1,000: a reading signed by a key no device holds.
    agreements = _open(stack, 1)
    readings = _stream(stack, agreements, 1_000, domain)
    bad = 777
    forged = batch_tree.decode_reading(readings[bad])
    readings[bad] = batch_tree.sign_reading(
        os.urandom(32), domain, forged.agreement_id, forged.seq, forged.timestamp, forged.value
    )
    receipt, leaves = _commit(sender, encoder, readings, domain, bond)
    batch_id = topic_ints(receipt, opt.address, committed)[0]
    watcher = stack.fund_relayer()
    challenge = RawSender(stack.config.chain.rpc_url, stack.chain.chain_id, watcher).send_many(
        [encoder.call("challenge", batch_id, readings[bad], batch_tree.proof(leaves, bad), gas=500_000)]
    )[0]
    if int(opt.functions.batchOf(batch_id).call()[4]) != 2:  # IOptimisticBilling.BatchStatus.Voided
        raise IotSettleError("optimistic gas phase: the challenge did not void the batch")
    figures += _measure_telematics(stack, sender, window, bond)
    other = {
        "challenge_gas": int(challenge["gasUsed"], 16),
        "challenge_batch": 1_000,
        "window_s": window,
        "bond_wei": bond,
        "readings_per_agreement_per_window": READINGS_PER_AGREEMENT,
    }
    return figures, other


def _measure_telematics(stack: BenchStack, sender: RawSender, window: int, bond: int) -> list[OptimisticFigure]:
    """OptimisticMotor's figures at the same batch sizes: a batch of reports, then the newest report of each
    policy claimed after the window (each claim checked to have charged its policy)."""
    om = stack.ctx_contract(MOTOR)
    encoder = Encoder(om)
    domain = eip712.Domain(stack.chain.chain_id, om.address)
    committed, claimed = topic_of(om, "BatchCommitted"), topic_of(om, "ReportClaimed")
    figures = []
    for batch in BATCHES:
        policies = _open_policies(stack, max(1, batch // READINGS_PER_AGREEMENT))
        _advance(stack, 3_600)
        reports = _stream_reports(stack, policies, batch, domain)
        receipt, leaves = _commit(sender, encoder, reports, domain, bond, "telematics")
        batch_id = topic_ints(receipt, om.address, committed)[0]
        _advance(stack, window + 1)
        newest = range(batch - len(policies), batch)
        claims = sender.send_many(
            [encoder.call("claim", batch_id, reports[i], batch_tree.proof(leaves, i), gas=400_000) for i in newest]
        )
        charged = sorted(i for r in claims for i in topic_ints(r, om.address, claimed))
        if charged != sorted(p.agreement_id for p in policies):
            raise IotSettleError(f"optimistic telematics phase: {len(charged)} of {len(policies)} claims charged")
        figure = OptimisticFigure(
            batch,
            len(policies),
            int(receipt["gasUsed"], 16),
            sum(int(r["gasUsed"], 16) for r in claims),
            MOTOR_KIND,
        )
        figures.append(figure)
        log.info("gas %s batch %d: %d per report", MOTOR_KIND, batch, figure.per_event)
    return figures


class _CancunAnvil(Anvil):
    """anvil with Cancun's rules: calldata priced by EIP-2028 alone, without Prague's EIP-7623 floor."""

    def command(self) -> list[str]:
        return [*super().command(), "--hardfork", "cancun"]


@contextmanager
def cancun_stack(stack: BenchStack) -> Iterator[BenchStack]:
    """The contracts deployed on an anvil of their own with Cancun's rules, beside ``stack``; stopped on exit."""
    state = stack.state_dir / "cancun"
    config = bench_config(state, free_port(), stack.mosquitto.port)
    node = _CancunAnvil(config)
    node.start()
    try:
        chain = connect(config)
        manifest = deploy_all(config, chain, Account.from_key(DEPLOYER))
        yield BenchStack(config, node, stack.mosquitto, chain, manifest, state)
    finally:
        node.stop()


def measure(stack: BenchStack) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The ``gas[]`` entries of optimistic mode (``per_event`` on the bench node, ``per_event_eip2028`` on a Cancun
    node) and its other figures (``challenge_gas`` on each, the window, the bond)."""
    figures, other = measure_optimistic(stack, stack.fund_relayer())
    with cancun_stack(stack) as cancun:
        priced, cancun_other = measure_optimistic(cancun, cancun.fund_relayer())
    entries = []
    for figure, eip2028 in zip(figures, priced, strict=True):
        entry = figure.as_dict()
        entry["per_event_eip2028"] = eip2028.per_event
        entry["commit_per_event_eip2028"] = round(eip2028.commit_gas / eip2028.batch)
        entry["claim_per_event_eip2028"] = round(eip2028.claim_gas / eip2028.batch)
        entries.append(entry)
    other["challenge_gas_eip2028"] = cancun_other["challenge_gas"]
    return entries, other
