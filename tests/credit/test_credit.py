"""`iotsettle credit profile / verify` on a real anvil: a history built through the ordinary operations, profiled
from the chain's logs, exported, verified, and caught when a figure in the file is changed."""

from __future__ import annotations

import functools
import json
import operator
from types import SimpleNamespace

from iotsettle.oracle.chain import logs as chain_logs
from iotsettle.oracle.chain.artifacts import load_artifact
from iotsettle.oracle.credit import scan
from iotsettle.oracle.credit.derive import ChainLog, ChainPoint, Profile, checksum, derive
from iotsettle.oracle.credit.document import PROFILE_VERSION, build, canonical_json
from iotsettle.oracle.credit.scan import CONTRACTS, chain_point, contract_refs
from iotsettle.oracle.protocol import settled
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.location import location_bytes32
from iotsettle.oracle.testing.stack import private_deployment

from tests.kit.cli import Cli, register_device
from tests.kit.products import allow_insurer, chain_now, delivery, reading, telematics, warp_to, weather

TOKEN = 10**18
DEST = "u33dc0cr"


class _CappedNode:
    """The real anvil behind a provider that refuses eth_getLogs over more than ``max_span`` blocks."""

    def __init__(self, inner, max_span: int) -> None:
        self.inner, self.max_span, self.refused = inner, max_span, 0

    def make_request(self, method, params):
        if method == "eth_getLogs" and int(params[0]["toBlock"], 16) - int(params[0]["fromBlock"], 16) >= self.max_span:
            self.refused += 1
            return {"jsonrpc": "2.0", "id": 1, "error": {"code": -32005, "message": "block range too large"}}
        return self.inner.make_request(method, params)

    def make_batch_request(self, requests):
        return self.inner.make_batch_request(requests)


def _settle(cli: Cli, deployment, w3, meter, agreement_id: int, seq: int, value: int, relayer) -> None:
    signed = reading(
        meter, w3.eth.chain_id, deployment.address("MeteredBilling"), agreement_id, seq, chain_now(w3), value
    )
    cli.ok(["agreement", "settle", "-"], relayer, stdin=signed.to_payload().decode())


def _history(cli: Cli, deployment, w3):
    """The subject consumes metered energy (one reading paid on time, one that runs dry, a top-up that resumes) and
    sells a delivery tracked by its own tracker (released)."""
    subject, provider, buyer = cli.user(w3), cli.user(w3), cli.user(w3)
    meter = register_device(deployment.config, provider, DeviceKind.METER)
    agreement_id = int(
        cli.ok(
            [
                "agreement",
                "open",
                "--consumer",
                subject.address,
                "--device",
                meter.address,
                "--price",
                "1",
                "--start-value",
                "1000",
            ],
            provider,
        )["agreementId"]
    )
    cli.ok(["token", "mint", "--to", subject.address, "--amount", "100"], subject)
    cli.ok(["agreement", "accept", hex(agreement_id), "--deposit", "3"], subject)
    _settle(cli, deployment, w3, meter, agreement_id, 1, 1002, provider)  # costs 2 of the 3 prepaid: on time
    _settle(cli, deployment, w3, meter, agreement_id, 2, 1005, provider)  # costs 3, 1 left: suspended, arrears 2
    assert cli.ok(["agreement", "status", hex(agreement_id)])["status"] == "suspended"
    cli.ok(["agreement", "top-up", hex(agreement_id), "--amount", "4"], subject)  # pays the 2 arrears, resumes

    tracker = register_device(deployment.config, subject, DeviceKind.TRACKER)
    cli.ok(["token", "mint", "--to", buyer.address, "--amount", "100"], buyer)
    escrow_id = cli.ok(
        [
            "escrow",
            "create",
            "--seller",
            subject.address,
            "--device",
            tracker.address,
            "--amount",
            "25",
            "--destination",
            DEST,
            "--deadline",
            "+2h",
        ],
        buyer,
    )["escrowId"]
    signed = delivery(
        tracker,
        w3.eth.chain_id,
        deployment.address("DeliveryEscrow"),
        escrow_id,
        1,
        chain_now(w3),
        location_bytes32(DEST),
    )
    cli.ok(["escrow", "confirm", "-"], buyer, stdin=signed.to_payload().decode())
    return subject, agreement_id, escrow_id, tracker


def test_profile_export_verify_and_a_tampered_figure(cli, deployment, w3, tmp_path, monkeypatch) -> None:
    subject, agreement_id, escrow_id, tracker = _history(cli, deployment, w3)
    token = deployment.address("TestToken")
    block = w3.eth.block_number

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    doc = cli.ok(["credit", "profile", subject.address, "--to-block", str(block), "--out", str(first)])
    cli.ok(["credit", "profile", subject.address.lower(), "--to-block", str(block), "--out", str(second)])
    assert first.read_bytes() == second.read_bytes()  # deterministic: same block, same bytes
    assert json.loads(first.read_text()) == doc

    # small chunks and one id per query (as a strict provider would force) read the same logs, with progress
    monkeypatch.setattr(chain_logs, "LOG_CHUNK_BLOCKS", 4)
    monkeypatch.setattr(scan, "IDS_PER_QUERY", 1)
    chunked = cli.run(["credit", "profile", subject.address, "--to-block", str(block), "--json"])
    assert chunked.exit_code == 0 and chunked.stdout == first.read_text()
    assert "MeteredBilling AgreementOffered: blocks" in chunked.stderr
    monkeypatch.undo()

    # a provider that refuses spans of more than 3 blocks (as public ones cap eth_getLogs) gets the range in halves
    capped = _CappedNode(w3.provider, max_span=3)
    manifest = deployment.manifest["contracts"]
    refs = contract_refs(
        w3, {n: (manifest[n]["address"], manifest[n]["block"], manifest[n]["txHash"]) for n in CONTRACTS}, block
    )
    abis = {n: load_artifact(deployment.config, n)["abi"] for n in refs}
    run = build(SimpleNamespace(provider=capped), subject.address, chain_point(w3, block), refs, abis)
    assert canonical_json(run.document) == first.read_text() and capped.refused > 0

    assert (doc["profileVersion"], doc["subject"]) == (PROFILE_VERSION, subject.address)
    assert doc["chain"] == {"chainId": w3.eth.chain_id, "genesisHash": w3.eth.get_block(0)["hash"].to_0x_hex()}
    assert (
        doc["range"]["toBlock"] == block and doc["range"]["toBlockHash"] == w3.eth.get_block(block)["hash"].to_0x_hex()
    )
    assert doc["contracts"]["MeteredBilling"]["address"] == deployment.address("MeteredBilling")

    consumer = doc["figures"]["consumer"]
    assert {
        k: consumer[k]
        for k in (
            "agreements",
            "accepted",
            "readings",
            "readingsPaidOnTime",
            "paidOnTimeBps",
            "suspensions",
            "resumptions",
            "suspendedNow",
            "topUps",
        )
    } == {
        "agreements": 1,
        "accepted": 1,
        "readings": 2,
        "readingsPaidOnTime": 1,
        "paidOnTimeBps": 5_000,
        "suspensions": 1,
        "resumptions": 1,
        "suspendedNow": 0,
        "topUps": 1,
    }
    assert consumer["deposited"] == {token: str(7 * TOKEN)} and consumer["billed"] == {token: str(3 * TOKEN)}
    assert consumer["arrearsIncurred"] == {token: str(2 * TOKEN)} and consumer["arrearsPaid"] == {token: str(2 * TOKEN)}
    assert consumer["suspendedSeconds"] >= 0 and consumer["items"][hex(agreement_id)]["readings"] == 2

    seller = doc["figures"]["seller"]
    assert (seller["escrows"], seller["delivered"], seller["refunded"], seller["onTimeBps"]) == (1, 1, 0, 10_000)
    assert seller["released"] == {token: str(25 * TOKEN)} and seller["items"][str(escrow_id)]["outcome"] == "delivered"

    devices = doc["figures"]["devices"]
    assert devices["count"] == 1 and devices["byKind"] == {"TRACKER": 1}
    item = devices["items"][tracker.address]
    assert item["settled"]["events"] == 1 and item["settled"]["deliveries"] == 1
    assert item["uptime"]["bucket"] == "hour" and item["uptime"]["active"] == 1  # a young device: hours
    assert item["uptime"]["bps"] == 10_000 // item["uptime"]["buckets"]
    assert doc["figures"]["loans"]["taken"] == 0 and doc["figures"]["crop"]["covers"] == 0

    # every cited log is on chain where the file says, emitted by the contract the figure is about
    logs = doc["evidence"]["logs"]
    cited = [logs[i] for i in doc["evidence"]["figures"]["consumer.readings"]]
    assert len(cited) == 2
    # a reading is one record of a ReadingsSettled batch log: [tx, log index, block, record index]
    for tx_hash, log_index, block_number, record in cited:
        receipt = w3.eth.get_transaction_receipt(tx_hash)
        entry = next(e for e in receipt["logs"] if e["logIndex"] == log_index)
        assert (receipt["blockNumber"], entry["address"]) == (block_number, deployment.address("MeteredBilling"))
        assert entry["topics"][0] == settled.TOPIC
        assert settled.decode_log_data(bytes(entry["data"]))[record].agreement_id == agreement_id

    result = cli.run(["credit", "verify", str(first)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("verified")

    tampered = json.loads(first.read_text())
    tampered["figures"]["consumer"]["billed"][token] = str(30 * TOKEN)
    (tmp_path / "t.json").write_text(json.dumps(tampered))
    result = cli.run(["credit", "verify", str(tmp_path / "t.json")])
    assert result.exit_code == 1
    assert (
        f'figure consumer.billed.{token}: the file says "{30 * TOKEN}", the chain gives "{3 * TOKEN}"' in result.stdout
    )

    # a scan claimed to start after the contract's creation (hiding early history) is refused
    tampered = json.loads(first.read_text())
    tampered["contracts"]["MeteredBilling"]["fromBlock"] += 1
    (tmp_path / "s.json").write_text(json.dumps(tampered))
    result = cli.run(["credit", "verify", str(tmp_path / "s.json")])
    assert result.exit_code == 1 and result.stdout.startswith("not verified: contracts: MeteredBilling at ")

    # a log dropped from the evidence of a figure is caught too
    tampered = json.loads(first.read_text())
    tampered["evidence"]["figures"]["consumer.readings"].pop()
    (tmp_path / "e.json").write_text(json.dumps(tampered))
    result = cli.run(["credit", "verify", str(tmp_path / "e.json"), "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout) == {
        "verified": False,
        "difference": "evidence of figure consumer.readings: the logs cited differ from the chain's",
    }


def test_profile_of_a_driver_and_borrower_from_the_product_contracts(cli, deployment, w3, tmp_path) -> None:
    subject, insurer, lender = cli.user(w3), cli.user(w3), cli.user(w3)
    token = deployment.address("TestToken")
    vehicle = register_device(deployment.config, subject, DeviceKind.VEHICLE)
    policy_id = int(
        cli.ok(
            [
                "policy",
                "offer",
                "--holder",
                subject.address,
                "--vehicle",
                vehicle.address,
                "--rate",
                "0.05",
                "--min-factor",
                "0.9",
                "--max-factor",
                "1.5",
                "--step",
                "0.1",
                "--start-odometer",
                "1000000",
            ],
            insurer,
        )["policyId"]
    )
    cli.ok(["token", "mint", "--amount", "50"], subject)
    cli.ok(["policy", "accept", hex(policy_id), "--deposit", "20"], subject)
    motor = deployment.address("MotorInsurance")
    cli.ok(["policy", "settle", "-"], insurer, stdin=telematics(vehicle, w3, motor, policy_id, 1, 1_100_000))  # 100 km

    cli.ok(["token", "mint", "--amount", "100"], lender)
    loan_id = cli.ok(
        [
            "loan",
            "offer",
            "--borrower",
            subject.address,
            "--principal",
            "10",
            "--repayment",
            "11",
            "--share",
            "50%",
            "--due-by",
            "+30d",
        ],
        lender,
    )["loanId"]
    account = cli.ok(["loan", "accept", str(loan_id)], subject)["account"]
    # the borrower sells a delivery with the loan's payout account as seller; a sweep repays half of the 2 TEST
    tracker = register_device(deployment.config, subject, DeviceKind.TRACKER)
    cli.ok(["token", "mint", "--amount", "2"], lender)
    escrow_id = cli.ok(
        [
            "escrow",
            "create",
            "--seller",
            account,
            "--device",
            tracker.address,
            "--amount",
            "2",
            "--destination",
            DEST,
            "--deadline",
            "+2h",
        ],
        lender,
    )["escrowId"]
    cli.ok(
        ["escrow", "confirm", "-"],
        lender,
        stdin=delivery(
            tracker,
            w3.eth.chain_id,
            deployment.address("DeliveryEscrow"),
            escrow_id,
            1,
            chain_now(w3),
            location_bytes32(DEST),
        )
        .to_payload()
        .decode(),
    )
    cli.ok(["loan", "sweep", str(loan_id)])
    cli.ok(["loan", "repay", str(loan_id), "--amount", "3"], subject)
    out = tmp_path / "p.json"
    doc = cli.ok(["credit", "profile", subject.address, "--out", str(out)])

    motor_figures = doc["figures"]["motor"]
    assert (
        motor_figures["policies"],
        motor_figures["accepted"],
        motor_figures["reports"],
        motor_figures["metres"],
        motor_figures["paidOnTimeBps"],
        motor_figures["lapses"],
    ) == (1, 1, 1, 100_000, 10_000, 0)
    assert motor_figures["premiums"] == {token: str(45 * TOKEN // 10)}  # 100 km × 0.05 × factor 0.9
    assert doc["figures"]["devices"]["items"][vehicle.address]["settled"] == {"events": 1, "metres": 100_000}
    loans = doc["figures"]["loans"]
    assert (loans["offered"], loans["taken"], loans["fullyRepaid"], loans["overdue"]) == (1, 1, 0, 0)
    assert loans["repaid"] == {token: str(4 * TOKEN)} and loans["outstanding"] == {token: str(7 * TOKEN)}
    seller = doc["figures"]["seller"]
    assert (seller["escrows"], seller["delivered"], seller["released"]) == (1, 1, {token: str(2 * TOKEN)})
    assert seller["items"][str(escrow_id)]["seller"] == account  # paid to the loan's account: still the borrower's
    assert loans["items"][str(loan_id)]["status"] == "active"
    assert set(doc["contracts"]) == {
        "DeviceRegistry",
        "DeliveryEscrow",
        "MeteredBilling",
        "MotorInsurance",
        "CropInsurance",
        "LoanBook",
    }
    assert cli.run(["credit", "verify", str(out)]).exit_code == 0

    cli.ok(["loan", "repay", str(loan_id), "--amount", "7"], subject)  # the chain moved on: the old file still verifies
    assert cli.run(["credit", "verify", str(out)]).exit_code == 0
    loans = cli.ok(["credit", "profile", subject.address])["figures"]["loans"]
    assert (loans["fullyRepaid"], loans["repaidByDueBy"], loans["onTimeBps"], loans["outstanding"]) == (
        1,
        1,
        10_000,
        {},
    )


def test_farmer_paid_by_a_drought_cover_repays_the_loan_by_its_due_date(deployment, tmp_path) -> None:
    """The inclusion story end to end: a farmer borrows, names the loan's payout account as beneficiary of its crop
    cover, the drought pays out, a sweep repays the lender — and the profile shows all of it."""
    session_node = deployment.config.chain.rpc_url
    with private_deployment(tmp_path / "stack") as deployment:
        w3 = deployment.chain.w3
        cli = Cli(deployment.config)
        insurer, farmer, lender = cli.user(w3), cli.user(w3), cli.user(w3)
        stations = [register_device(deployment.config, insurer, DeviceKind.WEATHER_STATION) for _ in range(3)]
        allow_insurer(cli, insurer, stations)
        crop, token = deployment.address("CropInsurance"), deployment.address("TestToken")
        pool_id = cli.ok(["crop", "pool-create"], insurer)["poolId"]
        cli.ok(["token", "mint", "--amount", "500"], insurer)
        cli.ok(["crop", "pool-deposit", str(pool_id), "--amount", "500"], insurer)
        start = chain_now(w3) + 600
        season_id = cli.ok(
            [
                "crop",
                "season-create",
                "--pool",
                str(pool_id),
                *functools.reduce(operator.iadd, (["--station", s.address] for s in stations), []),
                "--k",
                "2",
                "--index",
                "rain",
                "--threshold",
                "50mm",
                "--start",
                str(start),
                "--end",
                str(start + 86400),
                "--premium",
                "5%",
                "--coverage-slack",
                "1h",
                "--finalize-delay",
                "10s",
                "--region",
                "u0yjj",
            ],
            insurer,
        )["seasonId"]
        cli.ok(["token", "mint", "--amount", "100"], lender)
        loan_id = cli.ok(
            [
                "loan",
                "offer",
                "--borrower",
                farmer.address,
                "--principal",
                "100",
                "--repayment",
                "110",
                "--share",
                "100%",
                "--due-by",
                "+30d",
            ],
            lender,
        )["loanId"]
        account = cli.ok(["loan", "accept", str(loan_id)], farmer)["account"]
        cover_id = cli.ok(["crop", "buy", str(season_id), "--cover", "200", "--beneficiary", account], farmer)[
            "policyId"
        ]
        warp_to(w3, start + 60)
        cli.ok(["crop", "record", "-"], stdin="\n".join(weather(s, w3, crop, 1, 10_000) for s in stations))
        warp_to(w3, start + 86400 - 60)
        cli.ok(["crop", "record", "-"], stdin="\n".join(weather(s, w3, crop, 2, 11_000) for s in stations))
        warp_to(w3, start + 86400 + 1)  # each station reports once after the end: it votes only then
        cli.ok(["crop", "record", "-"], stdin="\n".join(weather(s, w3, crop, 3, 11_000) for s in stations))
        warp_to(w3, start + 86400 + 11)
        assert cli.ok(["crop", "finalize", str(season_id)])["triggered"] is True
        cli.ok(["loan", "sweep", str(loan_id)])

        out = tmp_path / "farmer.json"
        doc = cli.ok(["credit", "profile", farmer.address, "--out", str(out)])
        crop_figures, loans = doc["figures"]["crop"], doc["figures"]["loans"]
        assert (crop_figures["covers"], crop_figures["payouts"], crop_figures["expired"], crop_figures["pending"]) == (
            1,
            1,
            0,
            0,
        )
        assert crop_figures["cover"] == {token: str(200 * TOKEN)} and crop_figures["premiumsPaid"] == {
            token: str(10 * TOKEN)
        }
        assert crop_figures["payoutsToLoanAccounts"] == {token: str(200 * TOKEN)}
        assert crop_figures["payoutsReceived"] == {} and crop_figures["payoutsToOthers"] == {}
        assert crop_figures["items"][str(cover_id)]["beneficiary"] == account
        assert (loans["taken"], loans["fullyRepaid"], loans["repaidByDueBy"], loans["onTimeBps"]) == (1, 1, 1, 10_000)
        assert loans["repaid"] == {token: str(110 * TOKEN)} and loans["outstanding"] == {}
        assert cli.run(["credit", "verify", str(out)]).exit_code == 0
        # another anvil (the session's) has the same chain id but another history: named, not verified
        elsewhere = cli.run(["credit", "verify", str(out), "--rpc-url", session_node])
        assert elsewhere.exit_code == 1
        assert elsewhere.stdout.startswith(
            ("not verified: chain: this node's genesis block is", "not verified: range:")
        )

        station = stations[0].address
        insurer_doc = cli.ok(["credit", "profile", insurer.address])  # the stations' owner
        assert insurer_doc["figures"]["devices"]["byKind"] == {"WEATHER_STATION": 3}
        assert insurer_doc["figures"]["devices"]["items"][station]["settled"] == {
            "events": 3,
            "rainfall": 1_000,
            "rainfallFrom": 10_000,
        }


def test_profile_of_a_stranger_is_empty_and_a_future_block_is_refused(cli, deployment, w3) -> None:
    stranger = cli.user(w3)
    doc = cli.ok(["credit", "profile", stranger.address])
    assert doc["figures"]["devices"]["count"] == 0 and doc["figures"]["consumer"]["paidOnTimeBps"] is None
    assert doc["evidence"] == {"logs": [], "figures": {}}
    error = cli.fails(["credit", "profile", stranger.address, "--to-block", str(w3.eth.block_number + 100)])
    assert error.startswith(f"block {w3.eth.block_number + 100} is not mined yet")


# ------------------------------------------------------------------------------------------------ pure derivation
# The products below may be missing from a deployment; their rules are checked on the derivation alone, with logs
# shaped as the contracts emit them (docs/CREDIT.md §3).

SUBJECT = "0x" + "5" * 40
OTHER = "0x" + "6" * 40
TOKEN_ADDRESS = "0x" + "7" * 40
VEHICLE = "0x" + "8" * 40


def _log(block: int, index: int, contract: str, event: str, **args) -> ChainLog:
    return ChainLog(block, index, f"0x{block:064x}", contract, event, args)  # one transaction per block


def _derive(logs: list[ChainLog], end_time: int) -> Profile:
    from eth_utils import to_checksum_address

    def fix(value):
        return to_checksum_address(value) if isinstance(value, str) and len(value) == 42 else value

    logs = [
        ChainLog(e.block, e.log_index, e.tx_hash, e.contract, e.event, {k: fix(v) for k, v in e.args.items()}, e.record)
        for e in logs
    ]
    times = {e.block: e.block * 100 for e in logs}  # block n was mined at time 100·n
    return derive(SUBJECT, logs, times, ChainPoint(31337, "0x00", 99, "0x01", end_time))


def test_loans_repaid_by_due_date_late_and_overdue() -> None:
    book = "LoanBook"

    def offered(block, loan_id, borrower, due_by):
        return _log(
            block,
            0,
            book,
            "LoanOffered",
            loanId=loan_id,
            lender=OTHER,
            borrower=borrower,
            token=TOKEN_ADDRESS,
            principal=100,
            repayment=110,
            shareBps=5_000,
            acceptBy=10**9,
            dueBy=due_by,
        )

    logs = [
        offered(1, 1, SUBJECT, 1_000),
        _log(2, 0, book, "LoanAccepted", loanId=1, account=OTHER),
        _log(3, 0, book, "Repaid", loanId=1, amount=60, outstanding=50),
        _log(9, 0, book, "Repaid", loanId=1, amount=50, outstanding=0),
        _log(9, 1, book, "LoanRepaid", loanId=1),
        offered(4, 2, SUBJECT, 1_500),
        _log(5, 0, book, "LoanAccepted", loanId=2, account=OTHER),
        _log(6, 0, book, "Repaid", loanId=2, amount=10, outstanding=100),
        offered(7, 3, SUBJECT, 1_200),
        _log(8, 0, book, "LoanCancelled", loanId=3),
        offered(10, 4, OTHER, 500),
        _log(11, 0, book, "LoanAccepted", loanId=4, account=OTHER),  # someone else's
        _log(12, 0, book, "Repaid", loanId=4, amount=999, outstanding=0),
        _log(12, 1, book, "LoanRepaid", loanId=4),
        offered(13, 5, SUBJECT, 1_400),
        _log(14, 0, book, "LoanAccepted", loanId=5, account=OTHER),
        _log(16, 0, book, "Repaid", loanId=5, amount=110, outstanding=0),
        _log(16, 1, book, "LoanRepaid", loanId=5),
    ]
    profile = _derive(logs, end_time=2_000)
    v = profile.values
    token = checksum(TOKEN_ADDRESS)
    assert (v["loans.offered"], v["loans.taken"], v["loans.cancelled"]) == (4, 3, 1)
    # loan 1 repaid at t=900 ≤ 1000; loan 5 at t=1600 > 1400 (late); loan 2 owes 100 past its due date
    assert (v["loans.fullyRepaid"], v["loans.repaidByDueBy"], v["loans.repaidLate"], v["loans.overdue"]) == (2, 1, 1, 1)
    assert v["loans.onTimeBps"] == 3_333  # 1 on time of (2 repaid + 1 overdue)
    assert (v[f"loans.repaid.{token}"], v[f"loans.outstanding.{token}"], v[f"loans.principal.{token}"]) == (
        230,
        100,
        300,
    )
    assert (v["loans.items.1.status"], v["loans.items.2.status"], v["loans.items.5.status"]) == (
        "repaid",
        "overdue",
        "repaid late",
    )
    assert {k for _, k in profile.evidence["loans.repaidByDueBy"]} == {0, 1}  # the offer (dueBy) and LoanRepaid


def test_motor_premiums_paid_on_time_lapse_and_reinstatement() -> None:
    motor = "MotorInsurance"
    policy_id = int(VEHICLE, 16) << 96 | 1

    def charged(block, index, seq, amount):
        return _log(
            block,
            index,
            motor,
            "PremiumCharged",
            policyId=policy_id,
            seq=seq,
            metres=10_000,
            harshBraking=1,
            speeding=0,
            factorBps=9_000,
            amount=amount,
        )

    logs = [
        _log(1, 0, "DeviceRegistry", "DeviceRegistered", device=VEHICLE, owner=SUBJECT, kind=3, metadataHash=b""),
        _log(
            2,
            0,
            motor,
            "PolicyOffered",
            policyId=policy_id,
            insurer=OTHER,
            holder=SUBJECT,
            vehicle=VEHICLE,
            token=TOKEN_ADDRESS,
            ratePerKm=1,
            minFactorBps=8_000,
            maxFactorBps=12_000,
            stepBps=500,
            startOdometer=0,
            noticePeriod=0,
            startHarsh=0,
            startSpeeding=0,
        ),
        _log(3, 0, motor, "PolicyAccepted", policyId=policy_id, deposit=15),
        charged(4, 0, 1, 9),
        charged(5, 0, 2, 9),
        _log(5, 1, motor, "PolicyLapsed", policyId=policy_id, arrears=3),
        _log(8, 0, motor, "PolicyToppedUp", policyId=policy_id, **{"from": SUBJECT}, amount=10, arrearsPaid=3),
        _log(8, 1, motor, "PolicyReinstated", policyId=policy_id),
    ]
    profile = _derive(logs, end_time=1_000)
    v = profile.values
    token = checksum(TOKEN_ADDRESS)
    assert (v["motor.reports"], v["motor.reportsPaidOnTime"], v["motor.paidOnTimeBps"]) == (2, 1, 5_000)
    assert (v["motor.lapses"], v["motor.reinstatements"], v["motor.lapsedNow"]) == (1, 1, 0)
    assert v["motor.lapsedSeconds"] == 300 and v["motor.longestLapseSeconds"] == 300  # blocks 5 → 8
    # per month (all in January 1970 here) and the lapse as a span for the report's timeline
    month = {k.rsplit(".", 1)[1]: v[k] for k in v if k.startswith("motor.monthly.1970-01.") and k.count(".") == 3}
    assert month == {"reports": 2, "reportsPaidOnTime": 1, "lapses": 1}
    assert (
        v[f"motor.monthly.1970-01.premiums.{token}"] == 18 and v[f"motor.monthly.1970-01.arrearsIncurred.{token}"] == 3
    )
    assert {k: v[f"motor.spans.0.{k}"] for k in ("id", "from", "until", "arrears")} == {
        "id": hex(policy_id),
        "from": 500,
        "until": 800,
        "arrears": "3",
    }
    assert profile.evidence["motor.spans.0.until"] == {(5, 1), (8, 1)}  # PolicyLapsed and PolicyReinstated
    assert (v[f"motor.premiums.{token}"], v[f"motor.deposited.{token}"], v["motor.metres"]) == (18, 25, 20_000)
    vehicle = checksum(VEHICLE)
    assert v[f"devices.items.{vehicle}.settled.metres"] == 20_000
    # young device: hours 0..9 (registration at t=100, end at t=1000 → bucket 0 only); both reports in it
    assert (v[f"devices.items.{vehicle}.uptime.bucket"], v[f"devices.items.{vehicle}.uptime.active"]) == ("hour", 1)
