"""LoanBook operations: micro-loans repaid from the borrower's incoming payouts through the loan's payout account.

The borrower gives the loan's payout account (``accountOf``, known from the offer on) to payers: as the payee of
delivery escrows and the beneficiary of crop cover. ``sweep`` pulls what the sources credited to the account and
splits everything it holds: ``shareBps`` to the lender until the debt is repaid, the rest to the borrower.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from eth_utils import to_checksum_address
from iotsettle.oracle.ops._product import Sentences, named, state_name, transact_explained, when
from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.ops.events import fetch_logs
from iotsettle.oracle.ops.token import ensure_allowance
from iotsettle.oracle.ops.token_info import TokenInfo, describe_token
from iotsettle.oracle.ops.tx import TxResult, events_in
from iotsettle.oracle.ops.vocabulary import LOAN_STATUSES
from iotsettle.oracle.protocol.errors import ChainError

log = logging.getLogger(__name__)

CONTRACT = "LoanBook"
BPS = 10_000
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
#: contracts a sweep pulls from by default: both credit payouts with ``withdraw(address token)``
DEFAULT_SOURCES = ("DeliveryEscrow", "CropInsurance")


@dataclass(frozen=True)
class LoanView:
    loan_id: int
    lender: str
    borrower: str
    token: str
    principal: int
    repayment: int
    repaid: int
    share_bps: int
    accept_by: int
    due_by: int
    status: str
    account: str  # the payout account: deployed on accept, predicted before
    repaid_at: int
    outstanding: int
    account_balance: int

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("principal", "repayment", "repaid", "outstanding", "account_balance"):
            out[key] = str(out[key])
        return out


def loan_of(ctx: OpsContext, loan_id: int) -> LoanView:
    book = ctx.contract(CONTRACT)
    raw = named(book.abi, "loanOf", book.functions.loanOf(loan_id).call())
    status = int(raw["status"])
    if status == 0:
        raise ChainError(f"loan {loan_id} does not exist on chain {ctx.chain.chain_id}")
    account = raw["account"] if int(raw["account"], 16) else book.functions.accountOf(loan_id).call()
    balance = int(ctx.at("TestToken", raw["token"]).functions.balanceOf(account).call())
    return LoanView(
        loan_id,
        raw["lender"],
        raw["borrower"],
        raw["token"],
        int(raw["principal"]),
        int(raw["repayment"]),
        int(raw["repaid"]),
        int(raw["shareBps"]),
        int(raw["acceptBy"]),
        int(raw["dueBy"]),
        state_name(LOAN_STATUSES, status),
        to_checksum_address(account),
        int(raw["repaidAt"]),
        int(book.functions.outstanding(loan_id).call()),
        balance,
    )


def list_loans(ctx: OpsContext, *, party: str | None = None) -> list[LoanView]:
    views = []
    for entry in fetch_logs(ctx, CONTRACT, ["LoanOffered"]):
        a = entry.args
        if party and to_checksum_address(party) not in (a["lender"], a["borrower"]):
            continue
        views.append(loan_of(ctx, int(a["loanId"])))
    return views


def _status_sentence(a: dict[str, Any]) -> str:
    status = state_name(LOAN_STATUSES, int(a["status"]))
    if status == "offered":
        return f"loan {a['loanId']} is only offered: the borrower has not accepted it yet"
    return f"loan {a['loanId']} is {status}, which does not allow this"


SENTENCES: Sentences = {
    "UnknownLoan": lambda a: f"loan {a['loanId']} does not exist",
    "WrongStatus": _status_sentence,
    "NotBorrower": lambda a: f"only the borrower of loan {a['loanId']} may do this, not {a['caller']}",
    "NotAllowedToCancel": lambda a: (
        f"only the lender or the borrower may cancel loan {a['loanId']} before its offer expires, not {a['caller']}"
    ),
    "OfferExpired": lambda a: f"the offer of loan {a['loanId']} expired at {when(a['acceptBy'])}",
    "RepaymentBelowPrincipal": lambda a: (
        f"the repayment ({a['repayment']} base units) must be at least the principal ({a['principal']})"
    ),
    "InvalidShare": lambda a: f"a repayment share of {a['shareBps']} basis points is not within 1 … 10000",
    "InvalidDates": lambda a: (
        f"the offer must be open until a future time and due after that (accept by "
        f"{when(a['acceptBy'])}, due by {when(a['dueBy'])}, now {when(a['timestamp'])})"
    ),
    "TooManySources": lambda a: f"{a['count']} sources are more than a sweep takes ({a['max']})",
    "LoanTokenNeedsSweep": lambda a: f"the loan token of loan {a['loanId']} is split by `loan sweep`, not forwarded",
    # ZeroAmount is also what `repay` answers when nothing is outstanding: the loan's own wording says so.
    "ZeroAmount": lambda a: "the amount must be more than zero (or nothing is outstanding)",
}


def _send(ctx: OpsContext, call: Any) -> TxResult:
    return transact_explained(ctx, call, CONTRACT, SENTENCES)


@dataclass(frozen=True)
class LoanTerms:
    borrower: str
    token: TokenInfo
    principal: int
    repayment: int
    share_bps: int
    accept_by: int
    due_by: int


def offer(ctx: OpsContext, terms: LoanTerms) -> tuple[int, TxResult]:
    """Lender (the sender) offers the loan; the principal is pulled now and held until accept or cancel."""
    if terms.token.is_eth:
        raise ChainError("loans are made in an ERC-20 token, not ETH")
    if terms.repayment < terms.principal:  # the contract refuses too; this says it in tokens
        raise ChainError(
            f"the repayment {terms.token.format(terms.repayment)} is below the principal "
            f"{terms.token.format(terms.principal)}"
        )
    ensure_allowance(ctx, terms.token, CONTRACT, terms.principal)
    call = ctx.contract(CONTRACT).functions.offer(
        terms.borrower,
        terms.token.address,
        terms.principal,
        terms.repayment,
        terms.share_bps,
        terms.accept_by,
        terms.due_by,
    )
    result = _send(ctx, call)
    return int(events_in(ctx, CONTRACT, result.receipt, "LoanOffered")[0]["loanId"]), result


def accept(ctx: OpsContext, loan_id: int) -> tuple[TxResult, str]:
    """Borrower (the sender) accepts: the payout account is deployed and the principal paid out."""
    result = _send(ctx, ctx.contract(CONTRACT).functions.accept(loan_id))
    return result, events_in(ctx, CONTRACT, result.receipt, "LoanAccepted")[0]["account"]


def cancel_offer(ctx: OpsContext, loan_id: int) -> TxResult:
    return _send(ctx, ctx.contract(CONTRACT).functions.cancelOffer(loan_id))


def default_sources(ctx: OpsContext) -> list[str]:
    """The deployment's contracts that credit payouts (DeliveryEscrow, CropInsurance), where deployed."""
    return [ctx.address(name) for name in DEFAULT_SOURCES if ctx.has(name)]


@dataclass(frozen=True)
class SweepReport:
    loan_id: int
    repaid: int
    forwarded: int
    outstanding: int
    fully_repaid: bool
    collected: tuple[tuple[str, int], ...]  # (source, amount pulled into the account)
    failed: tuple[str, ...]  # sources whose withdraw reverted (usually: nothing credited)
    credited: tuple[tuple[str, int], ...]  # pushes that failed and wait in the loan book for `withdraw`
    tx: TxResult

    def as_dict(self) -> dict[str, Any]:
        return {
            "loanId": self.loan_id,
            "repaid": str(self.repaid),
            "forwarded": str(self.forwarded),
            "outstanding": str(self.outstanding),
            "fullyRepaid": self.fully_repaid,
            "collected": [{"source": s, "amount": str(a)} for s, a in self.collected],
            "failedSources": list(self.failed),
            "credited": [{"account": s, "amount": str(a)} for s, a in self.credited],
            "tx": self.tx.tx_hash,
            "block": self.tx.block,
            "gasUsed": self.tx.gas_used,
        }


def sweep(ctx: OpsContext, loan_id: int, sources: list[str] | None = None) -> SweepReport:
    """Anyone: collect the account's credits from ``sources`` (default: :func:`default_sources`) and split."""
    chosen = default_sources(ctx) if sources is None else list(sources)
    result = _send(ctx, ctx.contract(CONTRACT).functions.sweep(loan_id, chosen))
    repaid = events_in(ctx, CONTRACT, result.receipt, "Repaid")
    forwarded = events_in(ctx, CONTRACT, result.receipt, "Forwarded")
    outstanding = (
        int(repaid[-1]["outstanding"]) if repaid else int(ctx.contract(CONTRACT).functions.outstanding(loan_id).call())
    )
    return SweepReport(
        loan_id,
        sum(int(a["amount"]) for a in repaid),
        sum(int(a["amount"]) for a in forwarded),
        outstanding,
        bool(events_in(ctx, CONTRACT, result.receipt, "LoanRepaid")),
        tuple((a["source"], int(a["amount"])) for a in events_in(ctx, CONTRACT, result.receipt, "SourceCollected")),
        tuple(a["source"] for a in events_in(ctx, CONTRACT, result.receipt, "SourceFailed")),
        tuple((a["account"], int(a["amount"])) for a in events_in(ctx, CONTRACT, result.receipt, "Credited")),
        result,
    )


def repay(ctx: OpsContext, loan_id: int, amount: int) -> tuple[TxResult, int, int]:
    """Anyone pays the lender directly, capped at what is outstanding; returns (tx, paid, still outstanding)."""
    view = loan_of(ctx, loan_id)
    if view.status != "active":
        raise ChainError(f"loan {loan_id} is {view.status}; only an active loan takes repayments")
    ensure_allowance(ctx, describe_token(ctx, view.token), CONTRACT, min(amount, view.outstanding))
    result = _send(ctx, ctx.contract(CONTRACT).functions.repay(loan_id, amount))
    repaid = events_in(ctx, CONTRACT, result.receipt, "Repaid")
    return (
        result,
        sum(int(a["amount"]) for a in repaid),
        (int(repaid[-1]["outstanding"]) if repaid else view.outstanding),
    )
