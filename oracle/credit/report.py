"""Credit report: one self-contained HTML page a loan officer reads at a glance, made from a profile export only.

:func:`render` takes the export document (``iotsettle.oracle.credit.document``) and nothing else from the chain, so
every number on the page is a figure of the JSON it embeds. The page needs no network: styles inline, charts as
inline SVG drawn here, no script. Every figure shown is an element carrying its path and JSON value
(``data-figure`` / ``data-value``) and, when logs prove it, a link to its row in the evidence table (block,
transaction hash, log index). The page ends with the export itself and the command that re-verifies it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from string import Template
from typing import Any

from iotsettle.oracle.credit.document import canonical_json, flatten
from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.ops.token_info import describe_token
from iotsettle.oracle.protocol.errors import IotSettleError

#: Formats an amount of a token (address, base units) for people.
MoneyFormat = Callable[[str, int], str]

#: Per prepaid section: its title, the id's name, and its figure names (charges, money, paid on time, suspensions).
_PREPAID = {
    "consumer": (
        "Metered billing (consumer)",
        "agreement",
        ("readings", "billed", "readingsPaidOnTime", "suspensions"),
    ),
    "motor": ("Motor insurance (holder)", "policy", ("reports", "premiums", "reportsPaidOnTime", "lapses")),
}

_BILLED, _ON_TIME, _SPAN, _OPEN_SPAN, _UPTIME = "#4c72b0", "#2a9d5c", "#d1495b", "#8c1c2b", "#2a9d5c"


def short(address: str) -> str:
    return f"{address[:6]}…{address[-4:]}" if len(address) > 12 else address


def base_units(token: str, amount: int) -> str:
    """The default money format: no token metadata needed."""
    return f"{amount} base units of {short(token)}"


def money_format(ctx: OpsContext) -> MoneyFormat:
    """Amounts in the token's own units and symbol, read from the chain once per token (base units when the token
    does not answer)."""
    cache: dict[str, Callable[[int], str]] = {}

    def fmt(token: str, amount: int) -> str:
        if token not in cache:
            try:
                cache[token] = describe_token(ctx, token).format
            except IotSettleError:
                cache[token] = lambda value: base_units(token, value)
        return cache[token](amount)

    return fmt


def percent(bps: int | None) -> str:
    return "—" if bps is None else f"{bps / 100:.2f} %"


def duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def when(timestamp: int) -> str:
    return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%d %H:%M UTC")


def export_file_name(doc: Mapping[str, Any]) -> str:
    """The name the page suggests for its embedded export, and the one its verify command names."""
    return f"profile-{doc['subject'][:10].lower()}-{doc['range']['toBlock']}.json"


def verify_command(doc: Mapping[str, Any], rpc_url: str | None) -> str:
    """The one command that re-derives the embedded export from a node."""
    return f"iotsettle credit verify {export_file_name(doc)} --rpc-url {rpc_url or 'RPC_URL'}"


class _Page:
    """What every part of the page shares: the figures, their evidence and the money format."""

    def __init__(self, doc: Mapping[str, Any], money: MoneyFormat) -> None:
        self.doc = doc
        self.figures: Mapping[str, Any] = doc["figures"]
        self.flat = flatten(self.figures)
        self.evidence: Mapping[str, list[int]] = doc["evidence"]["figures"]
        self.money = money

    def value(self, path: str) -> Any:
        node: Any = self.figures
        for part in path.split("."):
            node = node[part]
        return node

    def fig(self, path: str, text: str | None = None) -> str:
        """One figure: its shown text, its path and JSON value, a link to its evidence when logs prove it."""
        value = self.value(path)
        if isinstance(value, dict) and value:  # money (token → amount) or counts by name: one figure each
            return ", ".join(self.fig(f"{path}.{key}") for key in sorted(value))
        shown = text if text is not None else self.show(path, value)
        attrs = f'class="fig" data-figure="{escape(path)}" data-value="{escape(json.dumps(value))}"'
        if path in self.evidence:
            return f'<a {attrs} href="#ev-{escape(path)}">{escape(shown)}</a>'
        return f"<span {attrs}>{escape(shown)}</span>"

    def show(self, path: str, value: Any) -> str:
        name = path.rsplit(".", 1)[-1]
        if value is None or isinstance(value, dict):  # an empty map: no money of any token
            return "—"
        if name.endswith("Bps") or name == "bps":
            return percent(value)
        if name.endswith("Seconds"):
            return duration(int(value))
        if name in ("from", "until", "registeredAt", "revokedAt", "dueBy", "deadline", "toBlockTime"):
            return when(value) if value else "—"
        if len(name) == 42 and name.startswith("0x") and isinstance(value, str):  # money: token → base units
            return self.money(name, int(value))
        return str(value)


def _bars(page: _Page, section: str, names: tuple[str, str, str, str]) -> str:
    """Grouped bars per month: charges settled and charges the balance covered."""
    monthly: Mapping[str, Any] = page.figures[section]["monthly"]
    months = sorted(monthly)
    charges, _money, on_time, _suspensions = names
    top = max([int(monthly[m].get(charges, 0)) for m in months] + [1])
    width, height, left, bottom, group = max(320, 90 * len(months) + 80), 220, 50, 30, 90
    plot = height - bottom - 20
    parts = [
        f'<svg id="chart-{section}-monthly" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{section} per month: {charges} and {on_time}">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#888"/>',
        f'<text x="{left - 6}" y="24" text-anchor="end" class="axis">{top}</text>',
        f'<text x="{left - 6}" y="{height - bottom}" text-anchor="end" class="axis">0</text>',
    ]
    for i, month in enumerate(months):
        x = left + 10 + i * group
        for j, (name, colour) in enumerate(((charges, _BILLED), (on_time, _ON_TIME))):
            path = f"{section}.monthly.{month}.{name}"
            value = int(monthly[month].get(name, 0))
            h = round(plot * value / top, 1)
            parts.append(
                f'<a href="#ev-{escape(path)}"><rect class="point" data-figure="{escape(path)}" data-value="{value}" '
                f'x="{x + j * 32}" y="{height - bottom - h}" width="28" height="{max(h, 1)}" fill="{colour}">'
                f"<title>{escape(month)}: {value} {escape(name)}</title></rect></a>"
            )
            parts.append(
                f'<text x="{x + j * 32 + 14}" y="{height - bottom - h - 4}" text-anchor="middle" class="axis">'
                f"{value}</text>"
            )
        parts.append(f'<text x="{x + 30}" y="{height - 10}" text-anchor="middle" class="axis">{escape(month)}</text>')
    parts.append("</svg>")
    legend = (
        f'<p class="legend"><span style="background:{_BILLED}"></span>{escape(charges)} billed '
        f'<span style="background:{_ON_TIME}"></span>paid on time (the prepaid balance covered them)</p>'
    )
    return "".join(parts) + legend


def _monthly(page: _Page, section: str, title: str, names: tuple[str, str, str, str]) -> str:
    figures = page.figures[section]
    charges, money, on_time, suspensions = names
    head = (
        f'<h2 id="{section}">{escape(title)}</h2><p class="kpis">paid on time '
        f"<b>{page.fig(f'{section}.paidOnTimeBps')}</b> ({page.fig(f'{section}.{on_time}')} of "
        f"{page.fig(f'{section}.{charges}')}) · {money} {page.fig(f'{section}.{money}')} · {suspensions} "
        f"{page.fig(f'{section}.{suspensions}')} · arrears incurred {page.fig(f'{section}.arrearsIncurred')}</p>"
    )
    if not figures["monthly"]:
        return head + f"<p>No {escape(charges)} settled in the range.</p>"
    rows = [
        f"<tr><td>{escape(m)}</td><td>{page.fig(f'{section}.monthly.{m}.{charges}')}</td>"
        f"<td>{page.fig(f'{section}.monthly.{m}.{on_time}')}</td>"
        f"<td>{_money_cell(page, f'{section}.monthly.{m}', money)}</td>"
        f"<td>{page.fig(f'{section}.monthly.{m}.{suspensions}')}</td>"
        f"<td>{_money_cell(page, f'{section}.monthly.{m}', 'arrearsIncurred')}</td></tr>"
        for m in sorted(figures["monthly"])
    ]
    table = _table(("month", charges, "paid on time", money, suspensions, "arrears incurred"), rows)
    return head + _bars(page, section, names) + table


def _money_cell(page: _Page, base: str, name: str) -> str:
    return page.fig(f"{base}.{name}") if name in page.value(base) else "—"


def _timeline(page: _Page) -> str:
    """Suspensions (metered billing) and lapses (motor) as spans on one time axis, one row per agreement."""
    spans = [
        (section, key, span)
        for section in _PREPAID
        for key, span in sorted(page.figures[section]["spans"].items(), key=lambda kv: int(kv[0]))
    ]
    head = '<h2 id="timeline">Suspensions and arrears</h2>'
    if not spans:
        return head + "<p>Never suspended nor lapsed in the range.</p>"
    end = int(page.doc["range"]["toBlockTime"])
    start = min(int(span["from"]) for _s, _k, span in spans)
    start = min(start, end - 3600)
    rows = sorted({(section, span["id"]) for section, _k, span in spans})
    width, left, row_h = 1000, 200, 26
    height = 40 + row_h * len(rows)

    def x(t: int) -> float:
        return round(left + (width - left - 20) * (t - start) / (end - start), 1)

    parts = [
        f'<svg id="chart-timeline" class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'role="img" aria-label="suspensions and lapses over time">',
        f'<text x="{left}" y="{height - 6}" class="axis">{escape(when(start))}</text>',
        f'<text x="{width - 20}" y="{height - 6}" text-anchor="end" class="axis">'
        f"{escape(when(end))} (end block)</text>",
    ]
    for r, (section, target) in enumerate(rows):
        y = 10 + r * row_h
        label = f"{_PREPAID[section][1]} {short(target)}"
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end" class="axis">{escape(label)}</text>')
        parts.append(f'<line x1="{left}" y1="{y + 10}" x2="{width - 20}" y2="{y + 10}" stroke="#ddd"/>')
    table_rows = []
    for section, key, span in spans:
        y = 10 + rows.index((section, span["id"])) * row_h
        until = span["until"]
        x0, x1 = x(int(span["from"])), x(end if until is None else int(until))
        path = f"{section}.spans.{key}"
        colour = _OPEN_SPAN if until is None else _SPAN
        arrears = page.money(span["token"], int(span["arrears"]))
        parts.append(
            f'<a href="#ev-{escape(path)}.from"><rect class="point" data-figure="{escape(path)}.from" '
            f'data-value="{int(span["from"])}" x="{x0}" y="{y + 2}" width="{max(round(x1 - x0, 1), 3)}" height="16" '
            f'fill="{colour}"><title>{escape(when(int(span["from"])))}: arrears {escape(arrears)}</title></rect></a>'
        )
        table_rows.append(
            f"<tr><td>{escape(_PREPAID[section][1])} {page.fig(f'{path}.id', short(span['id']))}</td>"
            f"<td>{page.fig(f'{path}.from')}</td>"
            f"<td>{page.fig(f'{path}.until', 'still suspended' if until is None else None)}</td>"
            f"<td>{page.fig(f'{path}.arrears', arrears)}</td></tr>"
        )
    parts.append("</svg>")
    legend = (
        f'<p class="legend"><span style="background:{_SPAN}"></span>suspended, then resumed by a top-up '
        f'<span style="background:{_OPEN_SPAN}"></span>still suspended at the end block</p>'
    )
    return head + "".join(parts) + legend + _table(("agreement / policy", "from", "until", "arrears"), table_rows)


def _uptime(page: _Page) -> str:
    devices: Mapping[str, Any] = page.figures["devices"]["items"]
    head = f'<h2 id="devices">Devices owned: {page.fig("devices.count")}</h2>'
    if not devices:
        return head + "<p>No device registered to this owner.</p>"
    width, left, row_h = 1000, 260, 26
    height = 20 + row_h * len(devices)
    parts = [
        f'<svg id="chart-uptime" class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'role="img" aria-label="device uptime">'
    ]
    rows = []
    for r, (address, item) in enumerate(sorted(devices.items())):
        base = f"devices.items.{address}"
        bps = item["uptime"]["bps"] or 0
        y = 8 + r * row_h
        w = round((width - left - 80) * bps / 10_000, 1)
        label = f"{item['kind'].lower().replace('_', ' ')} {short(address)}"
        parts.append(f'<text x="{left - 8}" y="{y + 14}" text-anchor="end" class="axis">{escape(label)}</text>')
        parts.append(
            f'<rect x="{left}" y="{y}" width="{width - left - 80}" height="18" fill="#eee"/>'
            f'<a href="#ev-{escape(base)}.uptime.active"><rect class="point" data-figure="{escape(base)}.uptime.bps" '
            f'data-value="{json.dumps(item["uptime"]["bps"])}" x="{left}" y="{y}" width="{max(w, 1)}" height="18" '
            f'fill="{_UPTIME}"><title>{escape(percent(item["uptime"]["bps"]))}</title></rect></a>'
            f'<text x="{width - 74}" y="{y + 14}" class="axis">{escape(percent(item["uptime"]["bps"]))}</text>'
        )
        revoked = f" (revoked {page.fig(f'{base}.revokedAt')})" if item["revokedAt"] else ""
        rows.append(
            f"<tr><td>{page.fig(f'{base}.kind')} <code>{escape(address)}</code></td>"
            f"<td>{page.fig(f'{base}.registeredAt')}{revoked}</td>"
            f"<td>{page.fig(f'{base}.uptime.bps')}: {page.fig(f'{base}.uptime.active')} of "
            f"{page.fig(f'{base}.uptime.buckets')} {escape(item['uptime']['bucket'])}s</td>"
            f"<td>{page.fig(f'{base}.settled.events')}</td></tr>"
        )
    parts.append("</svg>")
    note = '<p class="note">Uptime: share of hours (young devices) or days with at least one settled event.</p>'
    return head + "".join(parts) + note + _table(("device", "registered", "uptime", "settled events"), rows)


def _items(page: _Page, section: str, title: str, columns: Sequence[str], empty: str) -> str:
    items: Mapping[str, Any] = page.figures[section]["items"]
    if not items:
        return f"<h3>{escape(title)}</h3><p>{escape(empty)}</p>"
    rows = []
    for key in sorted(items, key=lambda k: (len(k), k)):
        cells = []
        for column in columns:
            path = f"{section}.items.{key}.{column}"
            if column not in items[key]:
                cells.append("—")
            elif column in ("principal", "repayment", "repaid") and "token" in items[key]:
                cells.append(page.fig(path, page.money(items[key]["token"], int(items[key][column]))))
            elif column in ("lender", "insurer", "vehicle", "beneficiary", "buyer", "provider", "device"):
                cells.append(page.fig(path, short(items[key][column])))
            else:
                cells.append(page.fig(path))
        rows.append(f"<tr><td>{escape(short(key))}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<h3>{escape(title)}</h3>" + _table(("id", *columns), rows)


def _history(page: _Page) -> str:
    """Insurance (motor, crop) and loans: the section figures and one row per policy, cover and loan."""
    loans = page.figures["loans"]
    return (
        '<h2 id="history">Insurance and loans</h2>'
        f'<p class="kpis">loans taken {page.fig("loans.taken")} · repaid by the due date '
        f"{page.fig('loans.repaidByDueBy')} · late {page.fig('loans.repaidLate')} · overdue "
        f"{page.fig('loans.overdue')} · on time <b>{page.fig('loans.onTimeBps')}</b> · outstanding "
        f"{page.fig('loans.outstanding') if loans['outstanding'] else page.fig('loans.outstanding', 'nothing')}</p>"
        + _items(page, "loans", "Loans", ("lender", "principal", "repayment", "repaid", "dueBy", "status"), "No loan.")
        + f'<p class="kpis">motor policies {page.fig("motor.policies")} · premiums paid on time '
        f"<b>{page.fig('motor.paidOnTimeBps')}</b> · lapses {page.fig('motor.lapses')} · lapsed for "
        f"{page.fig('motor.lapsedSeconds')}</p>"
        + _items(page, "motor", "Motor policies", ("insurer", "vehicle", "reports", "premiums", "lapses"), "No policy.")
        + f'<p class="kpis">crop covers {page.fig("crop.covers")} · payouts {page.fig("crop.payouts")} · expired '
        f"{page.fig('crop.expired')} · pending {page.fig('crop.pending')}</p>"
        + _items(page, "crop", "Crop covers", ("seasonId", "beneficiary", "cover", "outcome"), "No crop cover.")
        + f'<p class="kpis">escrows sold {page.fig("seller.escrows")} · delivered on time '
        f"<b>{page.fig('seller.onTimeBps')}</b> ({page.fig('seller.delivered')}) · refunded "
        f"{page.fig('seller.refunded')} · overdue {page.fig('seller.overdue')}</p>"
    )


def _all_figures(page: _Page) -> str:
    rows = [f"<tr><td><code>{escape(path)}</code></td><td>{page.fig(path)}</td></tr>" for path in sorted(page.flat)]
    return (
        '<details id="figures"><summary>Every figure of the export</summary>'
        + _table(("figure", "value"), rows)
        + "</details>"
    )


def _evidence(page: _Page) -> str:
    logs: Sequence[Sequence[Any]] = page.doc["evidence"]["logs"]
    figure_rows = [
        f'<tr id="ev-{escape(path)}"><td><code>{escape(path)}</code></td><td>'
        + " ".join(f'<a href="#log-{i}">#{i}</a>' for i in indices)
        + "</td></tr>"
        for path, indices in sorted(page.evidence.items())
    ]
    # each log is [tx hash, log index, block] and, for a record of a ReadingsSettled batch log, its index in the log
    log_rows = [
        f'<tr id="log-{i}"><td>#{i}</td><td>{int(log[2])}</td><td><code>{escape(str(log[0]))}</code></td>'
        f"<td>{int(log[1])}{f' (record {int(log[3])})' if len(log) > 3 else ''}</td></tr>"
        for i, log in enumerate(logs)
    ]
    return (
        '<h2 id="evidence">Evidence</h2><p class="note">Each figure above links here: the logs it rests on, by '
        "block, transaction hash and log index in that transaction's receipt (and the record's index in a batch "
        "log).</p>"
        "<details open><summary>Figures and their logs</summary>"
        + _table(("figure", "logs"), figure_rows)
        + "</details><details open><summary>Logs</summary>"
        + _table(("log", "block", "transaction", "log index"), log_rows)
        + "</details>"
    )


def _verify(doc: Mapping[str, Any], rpc_url: str | None) -> str:
    text = canonical_json(doc)
    name = export_file_name(doc)
    data = base64.b64encode(text.encode()).decode()
    return (
        '<h2 id="verify">Check it yourself</h2><p>Save the export '
        f'(<a id="export-download" download="{escape(name)}" href="data:application/json;base64,{data}">'
        f"{escape(name)}</a>, also below) and re-derive every figure from any node of chain "
        f"{int(doc['chain']['chainId'])}:</p>"
        f'<pre id="verify-command">{escape(verify_command(doc, rpc_url))}</pre>'
        "<details><summary>The export (JSON)</summary>"
        f'<pre id="profile-json">{escape(text)}</pre></details>'
    )


def _table(columns: Iterable[str], rows: Iterable[str]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


_PAGE = Template(
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Credit report of $subject at block $to_block</title>
<style>
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2430;margin:24px auto;max-width:1060px;
padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #ddd}h3{font-size:15px}
.meta,.note{color:#5b6472;font-size:13px}.kpis{margin:6px 0 10px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{border:1px solid #d8dde5;border-radius:8px;padding:8px 12px;min-width:130px;background:#f8fafc}
.card b{display:block;font-size:20px}.card small{color:#5b6472}
table{border-collapse:collapse;margin:8px 0;font-size:13px;width:100%}
th,td{border-bottom:1px solid #e4e7ec;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f3f5f8}
a.fig{color:#1d4ed8;text-decoration:none;border-bottom:1px dotted #1d4ed8}
code,pre{font:12px ui-monospace,Menlo,monospace}pre{background:#f3f5f8;padding:8px;overflow:auto;white-space:pre-wrap}
.chart{display:block;max-width:100%;height:auto}.axis{font-size:11px;fill:#5b6472}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
tr:target{background:#fff3c4}
</style></head>
<body>
<h1>Credit report</h1>
<p class="meta">Owner <code id="subject">$subject</code> · chain $chain_id · blocks $from_block–$to_block
(up to $to_block_time, block hash <code>$to_block_hash</code>). Every figure is re-derived from the contracts' event
logs only; click one to see the logs that prove it.</p>
$cards
$sections
<p class="note">Definitions of every figure: docs/CREDIT.md, and the <code>definitions</code> of the export. Devices are
the owner's own claims; a counterparty may be the owner under another address.</p>
</body></html>
"""
)


def _cards(page: _Page) -> str:
    cards = [
        ("bills paid on time", "consumer.paidOnTimeBps", "consumer.readings", "readings"),
        ("suspensions", "consumer.suspensions", "consumer.suspendedSeconds", "suspended"),
        ("premiums paid on time", "motor.paidOnTimeBps", "motor.reports", "reports"),
        ("loans repaid on time", "loans.onTimeBps", "loans.taken", "taken"),
        ("deliveries on time", "seller.onTimeBps", "seller.escrows", "escrows"),
        ("devices owned", "devices.count", "devices.revoked", "revoked"),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><small>{escape(title)}</small><b>{page.fig(main)}</b>'
            f"<small>{escape(label)} {page.fig(extra)}</small></div>"
            for title, main, extra, label in cards
        )
        + "</div>"
    )


def render(doc: Mapping[str, Any], *, money: MoneyFormat = base_units, rpc_url: str | None = None) -> str:
    """The report page of a profile export ``doc`` (``iotsettle.oracle.credit.document.document``)."""
    page = _Page(doc, money)
    rng = doc["range"]
    sections = [_monthly(page, section, title, names) for section, (title, _id, names) in _PREPAID.items()]
    sections.insert(1, _timeline(page))
    sections += [_uptime(page), _history(page), _all_figures(page), _evidence(page), _verify(doc, rpc_url)]
    return _PAGE.substitute(
        subject=escape(doc["subject"]),
        chain_id=int(doc["chain"]["chainId"]),
        from_block=int(rng["fromBlock"]),
        to_block=int(rng["toBlock"]),
        to_block_time=escape(when(rng["toBlockTime"])),
        to_block_hash=escape(str(rng["toBlockHash"])),
        cards=_cards(page),
        sections="\n".join(sections),
    )
