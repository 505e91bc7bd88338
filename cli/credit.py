"""`iotsettle credit profile ADDRESS` / `credit verify FILE`: a settlement history a lender can read and check."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from iotsettle.cli._common import IotSettleGroup, emit, out_console, progress
from iotsettle.cli._lazy import lazy_import
from iotsettle.cli._params import ADDRESS, CommandContext, short, with_context
from iotsettle.oracle.chain.artifacts import load_artifact
from rich.table import Table

if TYPE_CHECKING:
    from iotsettle.oracle.chain import connection as chain_connection
    from iotsettle.oracle.credit import document as credit_document
    from iotsettle.oracle.credit import report as credit_report
    from iotsettle.oracle.credit import scan as credit_scan
    from iotsettle.oracle.ops import context as ops_context
else:
    chain_connection = lazy_import("iotsettle.oracle.chain.connection")
    credit_document = lazy_import("iotsettle.oracle.credit.document")
    credit_report = lazy_import("iotsettle.oracle.credit.report")
    credit_scan = lazy_import("iotsettle.oracle.credit.scan")
    ops_context = lazy_import("iotsettle.oracle.ops.context")

#: Per section: its title and the summary figures shown to people, the first one telling whether the subject
#: has any history in that role (the JSON export has every figure).
_SUMMARY = {
    "consumer": (
        "consumer (metered billing)",
        (
            "agreements",
            "accepted",
            "deposited",
            "billed",
            "readings",
            "readingsPaidOnTime",
            "paidOnTimeBps",
            "arrearsIncurred",
            "arrearsPaid",
            "suspensions",
            "resumptions",
            "suspendedSeconds",
            "longestSuspensionSeconds",
            "suspendedNow",
        ),
    ),
    "seller": (
        "seller (delivery escrow)",
        (
            "escrows",
            "delivered",
            "refunded",
            "cancelled",
            "overdue",
            "open",
            "onTimeBps",
            "funded",
            "released",
            "penalties",
        ),
    ),
    "motor": (
        "insurance holder (motor)",
        (
            "policies",
            "accepted",
            "premiums",
            "reports",
            "reportsPaidOnTime",
            "paidOnTimeBps",
            "metres",
            "harshBraking",
            "speeding",
            "lapses",
            "reinstatements",
            "lapsedSeconds",
            "lapsedNow",
        ),
    ),
    "crop": (
        "farmer (crop cover)",
        (
            "covers",
            "cover",
            "premiumsPaid",
            "payouts",
            "payoutsReceived",
            "payoutsToLoanAccounts",
            "payoutsToOthers",
            "expired",
            "pending",
        ),
    ),
    "loans": (
        "borrower (loans)",
        (
            "offered",
            "taken",
            "principal",
            "repaymentDue",
            "repaid",
            "fullyRepaid",
            "repaidByDueBy",
            "repaidLate",
            "overdue",
            "outstanding",
            "onTimeBps",
        ),
    ),
}


@click.group(cls=IotSettleGroup)
def credit() -> None:
    """A settlement history per owner, re-derived only from the contracts' event logs, that a lender can read
    and anyone can check against any node.

    \b
    Examples:
      iotsettle credit profile 0xOWNER                              # tables for people
      iotsettle credit profile 0xOWNER --out profile.json           # the verifiable export
      iotsettle credit verify profile.json --rpc-url https://…      # "verified", or the first figure that differs
      iotsettle credit report 0xOWNER --out report.html             # one HTML page for a loan officer

    Definitions of every figure, and what a profile proves and does not: docs/CREDIT.md.
    """


def _value(ops_ctx: ops_context.OpsContext, name: str, value: Any) -> str:
    if isinstance(value, dict):
        if not value:
            return "—"
        return ", ".join(_money(ops_ctx, token, int(amount)) for token, amount in sorted(value.items()))
    if name.endswith("Bps"):
        return credit_report.percent(value)
    if name.endswith("Seconds"):
        return credit_report.duration(int(value))
    return str(value)


def _money(ops_ctx: ops_context.OpsContext, token: str, amount: int) -> str:
    return credit_report.money_format(ops_ctx)(token, amount)


def _render(ops_ctx: ops_context.OpsContext, doc: dict[str, Any]) -> None:
    figures = doc["figures"]
    rng = doc["range"]
    stamp = datetime.fromtimestamp(rng["toBlockTime"], UTC).strftime("%Y-%m-%d %H:%M UTC")
    out_console.print(
        f"credit profile of [bold]{doc['subject']}[/bold] — chain {doc['chain']['chainId']}, blocks "
        f"{rng['fromBlock']}..{rng['toBlock']} ({stamp}, block hash {rng['toBlockHash'][:12]}…)"
    )
    devices = Table(
        "device",
        "kind",
        "registered",
        "uptime",
        "settled",
        "volume",
        title=f"devices owned: {figures['devices']['count']}",
    )
    for address, item in sorted(figures["devices"]["items"].items()):
        uptime = item["uptime"]
        settled = item["settled"]
        volume = []
        if "metres" in settled:
            volume.append(f"{settled['metres']} m")
        if "deliveries" in settled:
            volume.append(f"{settled['deliveries']} deliver{'y' if settled['deliveries'] == 1 else 'ies'}")
        if "rainfall" in settled:
            volume.append(f"{settled['rainfall'] / 100:g} mm rain")
        if "billed" in settled:
            volume.append(_value(ops_ctx, "billed", settled["billed"]) + " billed")
        registered = datetime.fromtimestamp(item["registeredAt"], UTC).strftime("%Y-%m-%d")
        devices.add_row(
            short(address),
            item["kind"].lower().replace("_", " "),
            registered + (" (revoked)" if item["revokedAt"] else ""),
            f"{uptime['active']} of {uptime['buckets']} {uptime['bucket']}s ({credit_report.percent(uptime['bps'])})",
            str(settled["events"]),
            ", ".join(volume) or "—",
        )
    out_console.print(devices)
    idle = []
    for section, (title, names) in _SUMMARY.items():
        figures_of = figures[section]
        if not figures_of[names[0]]:
            idle.append(title)
            continue
        table = Table("figure", "value", title=f"as {title}", min_width=44)
        for name in names:
            if name in figures_of:
                table.add_row(name, _value(ops_ctx, name, figures_of[name]))
        out_console.print(table)
    if idle:
        out_console.print(f"no history as {', '.join(idle)}")
    out_console.print(
        "[dim]definitions: docs/CREDIT.md (also in the --out export); only on-chain settlement counts, "
        "devices are the owner's own claims[/dim]"
    )


@credit.command()
@click.argument("address", type=ADDRESS)
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the verifiable JSON export to FILE (same bytes for the same block).",
)
@click.option(
    "--to-block",
    type=click.IntRange(0),
    default=None,
    help="Profile up to this block (default: the latest); fixes the result for later checks.",
)
@with_context(rpc=True)
def profile(cmd: CommandContext, address: str, out_file: str | None, to_block: int | None) -> None:
    """Settlement history of ADDRESS: devices owned and their uptime, metered billing as a consumer, escrows as a
    seller, insurance as a holder or farmer, loans as a borrower — each figure with the logs that prove it.

    \b
    Example:
      iotsettle credit profile 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 --out profile.json
    """
    run = credit_document.build_from_deployment(cmd.ops, address, to_block, progress)
    point_block = run.document["range"]["toBlock"]
    text = credit_document.canonical_json(run.document)
    if out_file:
        try:
            Path(out_file).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise click.FileError(out_file, exc.strerror) from None
        progress(
            f"wrote {out_file}: {run.stats.logs} logs read at block {point_block} in {run.seconds:.2f} s; "
            f"check it with `iotsettle credit verify {out_file}`"
        )
    if cmd.as_json:
        click.echo(text, nl=False)
    else:
        _render(cmd.ops, run.document)


@credit.command()
@click.argument("address", type=ADDRESS)
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False),
    required=True,
    help="Write the HTML page to FILE (one self-contained file: no network needed to open it).",
)
@click.option(
    "--to-block",
    type=click.IntRange(0),
    default=None,
    help="Report up to this block (default: the latest); fixes the result for later checks.",
)
@with_context(rpc=True)
def report(cmd: CommandContext, address: str, out_file: str, to_block: int | None) -> None:
    """Write the credit profile of ADDRESS as one HTML page a loan officer reads at a glance: bills billed and
    paid on time per month, suspensions and arrears on a timeline, device uptime, insurance and loans — each
    figure linked to the logs that prove it, with the JSON export embedded and the command that re-verifies it.

    \b
    Example:
      iotsettle credit report 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 --out report.html
    """
    run = credit_document.build_from_deployment(cmd.ops, address, to_block, progress)
    page = credit_report.render(run.document, money=credit_report.money_format(cmd.ops), rpc_url=cmd.ops.chain.rpc_url)
    try:
        Path(out_file).write_text(page, encoding="utf-8")
    except OSError as exc:
        raise click.FileError(out_file, exc.strerror) from None
    rng = run.document["range"]
    emit(
        {"report": str(Path(out_file).resolve()), "subject": run.document["subject"], "toBlock": rng["toBlock"]},
        cmd.as_json,
        f"wrote {out_file}: the credit report of {run.document['subject']} at block {rng['toBlock']} "
        f"({run.stats.logs} logs read in {run.seconds:.2f} s)",
    )


@credit.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@with_context(rpc=True)
def verify(cmd: CommandContext, file: str) -> None:
    """Re-derive the profile in FILE from the chain (any node: the contracts and block range come from the file)
    and print "verified" (exit 0) or the first figure that differs (exit 1).

    \b
    Example:
      iotsettle credit verify profile.json --rpc-url http://127.0.0.1:8545
    """
    try:
        claimed = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise click.BadParameter(f"cannot read {file} as JSON: {exc}", param_hint="FILE") from None
    if not isinstance(claimed, dict) or not isinstance(claimed.get("contracts"), dict):
        raise click.BadParameter(f"{file} is not a credit profile export", param_hint="FILE")
    config = cmd.config
    chain = chain_connection.connect(config, cmd.rpc_url)
    abis = {name: load_artifact(config, name)["abi"] for name in claimed["contracts"] if name in credit_scan.CONTRACTS}
    try:
        run = credit_document.verify_document(chain.w3, claimed, abis, progress)
    except credit_scan.ProfileMismatch as exc:
        # Plain echo, not rich: the sentence must stay on one line for scripts that grep it.
        if cmd.as_json:
            emit({"verified": False, "difference": str(exc)}, True)
        else:
            click.echo(f"not verified: {exc}")
        cmd.click.exit(1)
    if cmd.as_json:
        emit(
            {
                "verified": True,
                "subject": claimed["subject"],
                "toBlock": claimed["range"]["toBlock"],
                "logs": run.stats.logs,
                "seconds": round(run.seconds, 3),
            },
            True,
        )
    else:
        rng = claimed["range"]
        made = datetime.fromtimestamp(int(rng["toBlockTime"]), UTC).strftime("%Y-%m-%d %H:%M UTC")
        click.echo(
            f"verified: the profile of {claimed['subject']} at block {rng['toBlock']} ({made}) matches the "
            f"chain ({run.stats.logs} logs re-read)"
        )
