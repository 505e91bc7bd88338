"""`iotsettle credit report`: a history over three months on a real anvil, written as one HTML page, rendered in
headless Chromium — the charts drawn, every figure on the page equal to the JSON export's, the embedded export
verified against the chain by the command the page prints."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from iotsettle.oracle.credit.document import canonical_json, flatten
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.location import location_bytes32
from iotsettle.oracle.testing.stack import private_deployment

from tests.kit.cli import Cli, register_device
from tests.kit.products import chain_now, delivery, reading, warp_to

TOKEN = 10**18
MONTH = 32 * 86_400
CHART_COLOURS = {(0x4C, 0x72, 0xB0), (0x2A, 0x9D, 0x5C), (0xD1, 0x49, 0x5B), (0x8C, 0x1C, 0x2B)}


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("CI") != "true":
        pytest.skip("Debian's chromium is not installed (scripts/setup installs it; CI must have it)")
    assert found is not None, "chromium is missing in CI: scripts/setup installs it"
    return found


class _Dom(HTMLParser):
    """What the checks read from the rendered DOM: figures, chart points, the embedded export, the command."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[tuple[str, str, str]] = []  # (path, JSON value, tag)
        self.shown: list[tuple[str, str]] = []  # (path, text) of the figures shown as text
        self.points: dict[str, list[tuple[str, str]]] = {}
        self.texts: dict[str, str] = {}
        self.links: list[str] = []
        self.ids: set[str] = set()
        self._svg: str | None = None
        self._text_of: str | None = None
        self._figure: tuple[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "svg":
            self._svg = a.get("id", "")
            self.points.setdefault(self._svg, [])
        if tag == "a" and a.get("href", "").startswith("#"):
            self.links.append(a["href"][1:])
        if "data-figure" in a:
            self.figures.append((a["data-figure"], a["data-value"], tag))
            if tag == "rect" and "point" in a.get("class", "").split() and self._svg:
                self.points[self._svg].append((a["data-figure"], a["data-value"]))
            if tag in ("a", "span"):
                self._figure = (tag, a["data-figure"])
                self.shown.append((a["data-figure"], ""))
        if tag == "pre" and a.get("id"):
            self._text_of = a["id"]
            self.texts[a["id"]] = ""

    def handle_endtag(self, tag: str) -> None:
        if self._figure and tag == self._figure[0]:
            self._figure = None
        if tag == "svg":
            self._svg = None
        if tag == "pre":
            self._text_of = None

    def handle_data(self, data: str) -> None:
        if self._figure:
            path, text = self.shown[-1]
            self.shown[-1] = (path, text + data)
        if self._text_of:
            self.texts[self._text_of] += data


def _png_colours(path: Path) -> set[tuple[int, int, int]]:
    """The distinct RGB colours of an 8-bit RGB/RGBA PNG (what Chromium writes), after undoing the row filters."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour_type = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour_type in (2, 6), (depth, colour_type)
            channels = 3 if colour_type == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride, colours = zlib.decompress(idat), width * channels, set()
    previous = bytearray(stride)
    for y in range(height):
        kind, row = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = row[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                row[i] = (row[i] + left) & 0xFF
            elif kind == 2:
                row[i] = (row[i] + up) & 0xFF
            elif kind == 3:
                row[i] = (row[i] + ((left + up) >> 1)) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                row[i] = (row[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        colours.update(zip(row[0::channels], row[1::channels], row[2::channels], strict=True))
        previous = row
    return colours


#: Integer figures that are not counts (times, durations, ratios, block numbers, ids): shown otherwise.
_NOT_COUNTS = ("Seconds", "Bps", "bps", "At", "Block", "from", "until", "dueBy", "deadline", "seasonId")


def _three_months(cli: Cli, deployment: Any, w3: Any) -> tuple[Any, int]:
    """A consumer over three months: month 1 two readings paid on time; month 2 one on time, one that runs dry
    (suspended, arrears) and a top-up that resumes; month 3 one that runs dry again (still suspended at the end).
    It also owns a tracker that delivered once."""
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
    cli.ok(["agreement", "accept", hex(agreement_id), "--deposit", "5"], subject)
    billing = deployment.address("MeteredBilling")
    seq = 0

    def settle(value: int) -> None:
        nonlocal seq
        seq += 1
        signed = reading(meter, w3.eth.chain_id, billing, agreement_id, seq, chain_now(w3), value)
        cli.ok(["agreement", "settle", "-"], provider, stdin=signed.to_payload().decode())

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
            "u33dc0cr",
            "--deadline",
            "+2h",
        ],
        buyer,
    )["escrowId"]
    confirm = delivery(
        tracker,
        w3.eth.chain_id,
        deployment.address("DeliveryEscrow"),
        escrow_id,
        1,
        chain_now(w3),
        location_bytes32("u33dc0cr"),
    )
    cli.ok(["escrow", "confirm", "-"], buyer, stdin=confirm.to_payload().decode())

    settle(1001)  # month 1: 1 of 5
    settle(1003)  # 2 of 4: 2 left
    warp_to(w3, chain_now(w3) + MONTH)
    settle(1004)  # month 2: 1, 1 left
    settle(1007)  # 3 with 1 left: suspended, arrears 2
    cli.ok(["agreement", "top-up", hex(agreement_id), "--amount", "3"], subject)  # pays 2, resumes with 1
    warp_to(w3, chain_now(w3) + MONTH)
    settle(1010)  # month 3: 3 with 1 left: suspended again, arrears 2, never resumed
    return subject, agreement_id


def test_report_page_renders_its_charts_and_figures_equal_to_the_export(tmp_path) -> None:
    chromium = _chromium()
    with private_deployment(tmp_path / "stack") as deployment:
        w3 = deployment.chain.w3
        cli = Cli(deployment.config)
        subject, agreement_id = _three_months(cli, deployment, w3)
        block = w3.eth.block_number
        export, page = tmp_path / "profile.json", tmp_path / "report.html"
        doc = cli.ok(["credit", "profile", subject.address, "--to-block", str(block), "--out", str(export)])
        done = cli.ok(["credit", "report", subject.address, "--to-block", str(block), "--out", str(page), "--json"])
        assert done == {"report": str(page.resolve()), "subject": subject.address, "toBlock": block}

        # the figures the page is about, as derived (before trusting the page to show them)
        token = deployment.address("TestToken")
        consumer = doc["figures"]["consumer"]
        monthly = consumer["monthly"]
        assert [(m["readings"], m["readingsPaidOnTime"], m["suspensions"]) for _k, m in sorted(monthly.items())] == [
            (2, 2, 0),
            (2, 1, 1),
            (1, 0, 1),
        ]
        # billed is what the balance paid: a reading that ran it dry bills what was left, the rest is arrears
        assert [(m["billed"], m.get("arrearsIncurred", {})) for _k, m in sorted(monthly.items())] == [
            ({token: str(3 * TOKEN)}, {}),
            ({token: str(2 * TOKEN)}, {token: str(2 * TOKEN)}),
            ({token: str(1 * TOKEN)}, {token: str(2 * TOKEN)}),
        ]
        assert sum(m["readings"] for m in monthly.values()) == consumer["readings"] == 5
        spans = [consumer["spans"][k] for k in sorted(consumer["spans"], key=int)]
        assert [(s["id"], s["arrears"], s["until"] is None) for s in spans] == [
            (hex(agreement_id), str(2 * TOKEN), False),
            (hex(agreement_id), str(2 * TOKEN), True),
        ]
        assert spans[0]["until"] - spans[0]["from"] >= 0 and consumer["suspendedNow"] == 1

        unwritable = cli.run(["credit", "report", subject.address, "--out", str(tmp_path / "no" / "such" / "r.html")])
        assert unwritable.exit_code != 0 and "Traceback" not in unwritable.output
        assert "Could not open file" in unwritable.output and "r.html" in unwritable.output

        html = page.read_text(encoding="utf-8")
        # self-contained: nothing fetched when it is opened
        assert "<script" not in html and "<link" not in html and " src=" not in html and "url(" not in html

        rendered = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        shot = tmp_path / "report.png"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--screenshot={shot}",
                "--window-size=1200,1400",
                page.as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
        dom = _Dom()
        dom.feed(rendered)

        # the embedded export is the export, byte for byte
        assert dom.texts["profile-json"] == export.read_text(encoding="utf-8") == canonical_json(doc)

        # every figure shown equals the export's, and every figure of the export is shown
        flat = flatten(doc["figures"])
        shown: dict[str, Any] = {}
        for path, value, _tag in dom.figures:
            node: Any = doc["figures"]
            for part in path.split("."):
                node = node[part]
            assert json.loads(value) == node, path
            shown[path] = node
        assert set(flat) <= set(shown), sorted(set(flat) - set(shown))[:5]
        # and reads as the same number: counts as such, ratios in percent, amounts in TEST (18 decimals)
        checked = 0
        for path, text in dom.shown:
            value, name = shown[path], path.rsplit(".", 1)[-1]
            if name.startswith("0x") and len(name) == 42 and name == token and int(value) % TOKEN == 0:
                assert text == f"{int(value) // TOKEN} TEST", (path, text)
            elif name.endswith(("Bps", "bps")) and value is not None:
                assert text == f"{value / 100:.2f} %", (path, text)
            elif isinstance(value, int) and not isinstance(value, bool) and not name.endswith(_NOT_COUNTS):
                assert text == str(value), (path, text)
            else:
                continue
            checked += 1
        assert checked > 50, checked

        # each figure links to its evidence, which names the logs on chain
        for path in doc["evidence"]["figures"]:
            assert f"ev-{path}" in dom.ids and f"ev-{path}" in dom.links, path
        assert {f"log-{i}" for i in range(len(doc["evidence"]["logs"]))} <= dom.ids
        assert all(log[0] in rendered for log in doc["evidence"]["logs"])  # [tx, index, block(, record)]

        # charts: one bar per month and figure, one span per suspension, one bar per device, with the export's values
        bars = dom.points["chart-consumer-monthly"]
        assert len(bars) == 2 * len(monthly) == 6
        assert {p: json.loads(v) for p, v in bars} == {
            f"consumer.monthly.{m}.{name}": monthly[m][name]
            for m in monthly
            for name in ("readings", "readingsPaidOnTime")
        }
        assert [json.loads(v) for _p, v in dom.points["chart-timeline"]] == [s["from"] for s in spans]
        devices = doc["figures"]["devices"]
        assert len(dom.points["chart-uptime"]) == devices["count"] == 1
        assert "chart-motor-monthly" not in dom.points  # no insurance history: no empty chart

        # drawn: the screenshot is not blank and shows the charts' colours
        colours = _png_colours(shot)
        assert len(colours) > 20 and colours >= CHART_COLOURS, len(colours)

        # the printed command verifies the embedded export against the chain
        command = shlex.split(dom.texts["verify-command"])
        assert command[:3] == ["iotsettle", "credit", "verify"]
        saved = tmp_path / command[3]
        saved.write_text(dom.texts["profile-json"], encoding="utf-8")
        result = cli.run(["credit", "verify", str(saved), *command[4:]])
        assert result.exit_code == 0 and result.stdout.startswith("verified"), result.output
