"""`iotsettle loan ...`: micro-loans repaid automatically from the borrower's incoming payouts."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

import click
from iotsettle.cli._common import IotSettleGroup
from iotsettle.cli._lazy import lazy_import
from iotsettle.cli._params import ADDRESS, AMOUNT, DEADLINE, ID, TOKEN, CommandContext, short, when, with_context
from iotsettle.cli.crop import PERCENT
from iotsettle.oracle.ops.amounts import Amount
from iotsettle.oracle.ops.vocabulary import LOAN_STATUSES
from rich.table import Table

if TYPE_CHECKING:
    from iotsettle.oracle.ops import loan as ops
    from iotsettle.oracle.ops import token as token_ops
else:
    ops = lazy_import("iotsettle.oracle.ops.loan")
    token_ops = lazy_import("iotsettle.oracle.ops.token")


@click.group(cls=IotSettleGroup)
def loan() -> None:
    """Micro-loans repaid from payouts: a share of everything paid to the loan's payout account goes to the
    lender until the debt is repaid, the rest to the borrower.

    The borrower names the loan's payout account (`loan show`) as the payee of delivery escrows and as the
    beneficiary of crop cover; anyone may sweep it.

    \b
    Life of a loan:
      iotsettle loan offer --borrower 0x7099… --principal 100 --repayment 110 --share 50% --due-by +90d
      iotsettle loan accept 1 --dev-account 1                  # the borrower receives the principal
      iotsettle loan show 1                                    # the payout account to give to payers
      iotsettle loan sweep 1                                   # anyone: repay the lender, forward the rest
    """


@loan.command()
@click.option("--borrower", type=ADDRESS, required=True, help="Who receives the principal (accepts the offer).")
@click.option("--principal", type=AMOUNT, required=True, help="What the borrower receives, e.g. 100.")
@click.option("--repayment", type=AMOUNT, required=True, help="What the borrower pays back in total (≥ principal).")
@click.option(
    "--share", type=PERCENT, required=True, help="Share of every incoming payout taken for repayment, e.g. 50%."
)
@click.option("--token", type=TOKEN, default="TEST", show_default=True, help="TEST or an ERC-20 address.")
@click.option("--accept-by", type=DEADLINE, default="+7d", show_default=True, help="The offer's expiry.")
@click.option(
    "--due-by",
    type=DEADLINE,
    required=True,
    help="The agreed repayment date (recorded for the credit history, not enforced).",
)
@with_context(sender=True)
def offer(
    cmd: CommandContext,
    borrower: str,
    principal: Amount,
    repayment: Amount,
    share: int,
    token: str,
    accept_by: tuple[str, int],
    due_by: tuple[str, int],
) -> None:
    """Lender: offer BORROWER a loan; the principal is taken now and held until the borrower accepts or it is
    cancelled.

    \b
    Example (100 TEST, 110 to pay back, half of every payout until repaid):
      iotsettle loan offer --borrower 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 \\
          --principal 100 --repayment 110 --share 50% --due-by +90d
    """
    info = token_ops.describe_token(cmd.ops, token)
    terms = ops.LoanTerms(
        borrower,
        info,
        info.to_base(principal),
        info.to_base(repayment),
        share,
        cmd.chain_time(accept_by),
        cmd.chain_time(due_by),
    )
    loan_id, result = ops.offer(cmd.ops, terms)
    view = ops.loan_of(cmd.ops, loan_id)
    cmd.emit(
        {"loanId": loan_id, "account": view.account, "tx": result.tx_hash, "block": result.block},
        f"loan [bold]{loan_id}[/bold] offered to {borrower}: {info.format(terms.principal)} now, "
        f"{info.format(terms.repayment)} to repay by {when(terms.due_by)} (tx {result.tx_hash})\n"
        f"payout account: {view.account}\nnext, the borrower: iotsettle loan accept {loan_id}",
    )


@loan.command()
@click.argument("loan_id", type=ID)
@with_context(sender=True)
def accept(cmd: CommandContext, loan_id: int) -> None:
    """Borrower: accept the offer and receive the principal; the loan's payout account is created.

    \b
    Example:
      iotsettle loan accept 1 --dev-account 1
    """
    result, account = ops.accept(cmd.ops, loan_id)
    view = ops.loan_of(cmd.ops, loan_id)
    fmt = token_ops.describe_token(cmd.ops, view.token).format
    cmd.emit(
        {"loanId": loan_id, "account": account, "tx": result.tx_hash},
        f"loan {loan_id} active: {fmt(view.principal)} sent to {view.borrower} (tx {result.tx_hash})\n"
        f"name {account} as payee of escrows and beneficiary of crop cover; `iotsettle loan sweep {loan_id}` "
        "repays from what arrives there",
    )


@loan.command()
@click.argument("loan_id", type=ID)
@with_context(sender=True)
def cancel(cmd: CommandContext, loan_id: int) -> None:
    """Lender withdraws, or borrower declines, an offer not yet accepted (anyone once it expired); the principal
    goes back to the lender.

    \b
    Example:
      iotsettle loan cancel 1
    """
    result = ops.cancel_offer(cmd.ops, loan_id)
    cmd.emit({"loanId": loan_id, "tx": result.tx_hash}, f"loan offer {loan_id} cancelled (tx {result.tx_hash})")


@loan.command()
@click.argument("loan_id", type=ID)
@click.option(
    "--source",
    "sources",
    type=ADDRESS,
    multiple=True,
    help="A contract that credits the account (repeat). Default: this deployment's DeliveryEscrow and CropInsurance.",
)
@with_context(sender=True)
def sweep(cmd: CommandContext, loan_id: int, sources: tuple[str, ...]) -> None:
    """Anyone: pull what the sources credited to the loan's payout account, then split everything it holds: the
    loan's share to the lender until repaid, the rest to the borrower.

    \b
    Example:
      iotsettle loan sweep 1
    """
    view = ops.loan_of(cmd.ops, loan_id)
    fmt = token_ops.describe_token(cmd.ops, view.token).format
    report = ops.sweep(cmd.ops, loan_id, list(sources) if sources else None)
    lines = [
        f"loan {loan_id}: {fmt(report.repaid)} repaid to the lender, {fmt(report.forwarded)} forwarded to the "
        f"borrower; outstanding {fmt(report.outstanding)}" + (" — fully repaid" if report.fully_repaid else "")
    ]
    names = {cmd.ops.address(name): name for name in cmd.ops.manifest["contracts"]}
    lines += [f"  collected {fmt(amount)} from {names.get(source, source)}" for source, amount in report.collected]
    lines += [f"  {names.get(source, source)}: nothing credited to the account" for source in report.failed]
    lines += [
        f"  the push to {account} failed: {fmt(amount)} credited in the loan book (claim with its withdraw)"
        for account, amount in report.credited
    ]
    cmd.emit(report.as_dict(), "\n".join(lines) + f"\n(tx {report.tx.tx_hash})")


@loan.command()
@click.argument("loan_id", type=ID)
@click.option("--amount", type=AMOUNT, required=True, help="How much to pay (capped at what is outstanding).")
@with_context(sender=True)
def repay(cmd: CommandContext, loan_id: int, amount: Amount) -> None:
    """Anyone: pay the lender of a loan directly from the sender's balance.

    \b
    Example:
      iotsettle loan repay 1 --amount 10 --dev-account 1
    """
    info = token_ops.describe_token(cmd.ops, ops.loan_of(cmd.ops, loan_id).token)
    result, paid, outstanding = ops.repay(cmd.ops, loan_id, info.to_base(amount))
    cmd.emit(
        {"loanId": loan_id, "paid": str(paid), "outstanding": str(outstanding), "tx": result.tx_hash},
        f"{info.format(paid)} repaid on loan {loan_id}; outstanding {info.format(outstanding)} (tx {result.tx_hash})",
    )


@loan.command()
@click.argument("loan_id", type=ID)
@with_context(rpc=True)
def show(cmd: CommandContext, loan_id: int) -> None:
    """Show a loan: parties, outstanding and repaid amounts, due date, and the payout account to give to payers.

    \b
    Example:
      iotsettle loan show 1
    """
    view = ops.loan_of(cmd.ops, loan_id)
    fmt = token_ops.describe_token(cmd.ops, view.token).format
    table = Table(show_header=False, title=f"loan {loan_id}")
    due = when(view.due_by)
    if view.status == "active" and int(cmd.ops.w3.eth.get_block("latest")["timestamp"]) > view.due_by:
        due += " (overdue)"
    rows = [
        ("status", view.status),
        ("lender", view.lender),
        ("borrower", view.borrower),
        ("principal", fmt(view.principal)),
        ("repayment", fmt(view.repayment)),
        ("repaid", fmt(view.repaid)),
        ("outstanding", fmt(view.outstanding)),
        ("share of payouts", f"{Decimal(view.share_bps) / 100:f} % until repaid"),
        ("due by", due),
        ("offer open until", when(view.accept_by)),
        ("payout account", f"{view.account} (holds {fmt(view.account_balance)} not yet swept)"),
    ]
    if view.repaid_at:
        rows.append(("repaid at", when(view.repaid_at) + (" (late)" if view.repaid_at > view.due_by else "")))
    for key, value in rows:
        table.add_row(key, value)
    cmd.emit(view.as_dict(), table)


@loan.command("list")
@click.option("--party", type=ADDRESS, default=None, help="Only loans where ADDRESS is lender or borrower.")
@click.option("--status", "status_filter", type=click.Choice(list(LOAN_STATUSES[1:])), default=None)
@with_context(rpc=True)
def list_cmd(cmd: CommandContext, party: str | None, status_filter: str | None) -> None:
    """List the loans of this deployment.

    \b
    Example:
      iotsettle loan list --party 0x70997970C51812dc3A010C7d01b50e0d17dc79C8
    """
    views = [v for v in ops.list_loans(cmd.ops, party=party) if not status_filter or v.status == status_filter]
    table = Table(
        "id",
        "status",
        "lender",
        "borrower",
        "principal",
        "repaid",
        "outstanding",
        "due by",
        "payout account",
        title=f"{len(views)} loans",
    )
    for v in views:
        fmt = token_ops.describe_token(cmd.ops, v.token).format_short
        table.add_row(
            str(v.loan_id),
            v.status,
            short(v.lender),
            short(v.borrower),
            fmt(v.principal),
            fmt(v.repaid),
            fmt(v.outstanding),
            when(v.due_by),
            v.account,
        )
    cmd.emit([v.as_dict() for v in views], table)
