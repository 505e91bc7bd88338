"""The keeper: crop seasons finalized and paid at season end, loan payout accounts swept, with nobody asking.

``CropInsurance.finalize/payOut`` and ``LoanBook.sweep`` are permissionless, so any funded account can run a
keeper; it needs no role and holds nothing. One :meth:`Keeper.run_pass`:

1. reads the SeasonCreated and LoanOffered logs since the last block it scanned (history is read once);
2. finalizes every season that is due (``end + finalizeDelay`` reached: the verdict is decided and the pool
   booked) and, if it triggered, pays its policies in ``payOut`` pages until every one is paid; continues the
   payouts of a season finalized by someone else but not fully paid;
3. sweeps every loan whose payout account has something to collect: loan tokens in the account, or a credit for it
   in DeliveryEscrow or CropInsurance (``withdrawable``). Only the sources with a credit are passed. A repaid or
   cancelled loan's account is swept too: everything then goes to the borrower.

Every action is decided from views first, so a pass with nothing to do sends no transaction; a revert (someone
else finalized first, a race with another keeper) is logged and the pass goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from iotsettle.oracle.ops import crop, loan
from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.ops.events import fetch_logs
from iotsettle.oracle.ops.token_info import describe_token
from iotsettle.oracle.protocol.errors import IotSettleError
from web3.exceptions import Web3Exception

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Action:
    """One thing the keeper did (or tried: ``error`` set when it reverted)."""

    kind: str  # finalize | pay-out | sweep
    target: int  # season id or loan id
    text: str  # one line for logs and people
    details: dict[str, Any] = field(default_factory=dict)
    txs: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "text": self.text,
            "details": self.details,
            "txs": list(self.txs),
            "error": self.error,
        }


@dataclass(frozen=True)
class PassSummary:
    """What one pass scanned and did."""

    from_block: int
    to_block: int
    seasons_watched: int
    loans_watched: int
    actions: tuple[Action, ...]

    @property
    def failures(self) -> int:
        return sum(1 for a in self.actions if not a.ok)

    def as_dict(self) -> dict[str, Any]:
        return {
            "fromBlock": self.from_block,
            "toBlock": self.to_block,
            "seasonsWatched": self.seasons_watched,
            "loansWatched": self.loans_watched,
            "actions": [a.as_dict() for a in self.actions],
            "failures": self.failures,
        }


class Keeper:
    """Keeps what it learned between passes: the next block to scan, the seasons not yet fully paid, the loans."""

    def __init__(self, ctx: OpsContext) -> None:
        ctx.require_sender()
        self.ctx = ctx
        self.has_crop = ctx.has(crop.CONTRACT)
        self.has_loans = ctx.has(loan.CONTRACT)
        starts = [ctx.deployed_block(name) for name in (crop.CONTRACT, loan.CONTRACT) if ctx.has(name)]
        self.next_block = min(starts) if starts else 0
        self.seasons: set[int] = set()  # seasons not finalized or not fully paid
        self.loans: set[int] = set()  # every loan seen: a repaid one's account may still receive payouts

    def state(self) -> dict[str, Any]:
        """What the keeper learned, for ``restore`` in the next run (a cron job keeps it in a file)."""
        return {
            "chainId": self.ctx.chain.chain_id,
            "crop": self.ctx.address(crop.CONTRACT) if self.has_crop else None,
            "loanBook": self.ctx.address(loan.CONTRACT) if self.has_loans else None,
            "nextBlock": self.next_block,
            "seasons": sorted(self.seasons),
            "loans": sorted(self.loans),
        }

    def restore(self, saved: dict[str, Any]) -> bool:
        """Continue from a saved ``state``; ignored (False) when it belongs to another chain or deployment."""
        mine = self.state()
        if any(saved.get(key) != mine[key] for key in ("chainId", "crop", "loanBook")):
            log.warning("keeper state is for another chain or deployment: reading the history again")
            return False
        self.next_block = max(self.next_block, int(saved["nextBlock"]))
        self.seasons |= {int(s) for s in saved.get("seasons", [])}
        self.loans |= {int(i) for i in saved.get("loans", [])}
        return True

    # ------------------------------------------------------------------------------------------------ discovery

    def _discover(self, latest: int) -> None:
        """Seasons and loans created in blocks next_block..latest; a later block read again next time is harmless."""
        if self.next_block > latest:
            return
        if self.has_crop:
            for entry in fetch_logs(self.ctx, crop.CONTRACT, ["SeasonCreated"], from_block=self.next_block):
                self.seasons.add(int(entry.args["seasonId"]))
        if self.has_loans:
            for entry in fetch_logs(self.ctx, loan.CONTRACT, ["LoanOffered"], from_block=self.next_block):
                self.loans.add(int(entry.args["loanId"]))
        self.next_block = latest + 1

    # ------------------------------------------------------------------------------------------------ seasons

    def _season(self, season_id: int, now: int) -> Action | None:
        season = crop.season_of(self.ctx, season_id, details=False)
        if season.finalized and season.paid_up_to >= season.policy_count:
            self.seasons.discard(season_id)
            return None
        if not season.finalized and now < season.finalizable_at:
            return None
        if not season.finalized:
            kind = "finalize"
            report = crop.finalize(self.ctx, season_id, pay_all=True)
        else:
            kind = "pay-out"
            report = crop.pay_out(self.ctx, season_id, until_done=True)
        after = crop.season_of(self.ctx, season_id, details=False)
        if after.paid_up_to >= after.policy_count:
            self.seasons.discard(season_id)
        return Action(kind, season_id, self._season_text(kind, after, report), report.as_dict(), report.txs)

    def _season_text(self, kind: str, season: crop.SeasonView, report: crop.PayoutReport) -> str:
        fmt = describe_token(self.ctx, season.token).format
        stations = season.trigger_votes + season.no_trigger_votes + season.abstentions
        verb = "finalized" if kind == "finalize" else "paid out"
        paid = sum(amount for _, _, amount in report.paid)
        if season.triggered:
            outcome = f"trigger {season.trigger_votes}/{stations}"
            done = f"{_count(len(report.paid), 'cover')} paid, {fmt(paid)}"
            if report.credited:
                done += f" ({len(report.credited)} credited for claiming)"
        else:
            outcome = f"no trigger ({season.trigger_votes}/{stations} trigger votes, {season.k} needed)"
            done = f"{_count(len(report.expired), 'cover')} expired"
        left = f"; {report.remaining} still to process" if report.remaining else ""
        return f"season {season.season_id} {verb}: {outcome} → {done}{left}"

    # ------------------------------------------------------------------------------------------------ loans

    def _loan(self, loan_id: int) -> Action | None:
        view = loan.loan_of(self.ctx, loan_id)
        if view.status not in ("active", "repaid", "cancelled"):
            return None  # offered: sweep refuses until accepted
        balance, credits = waiting(self.ctx, view)
        if not balance and not credits:
            return None
        report = loan.sweep(self.ctx, loan_id, [source for source, _ in credits])
        fmt = describe_token(self.ctx, view.token).format
        text = f"loan {loan_id} swept: {fmt(report.repaid)} repaid, {fmt(report.forwarded)} forwarded"
        if report.fully_repaid:
            text += " (loan repaid in full)"
        elif view.status == "active":
            text += f", {fmt(report.outstanding)} outstanding"
        if report.failed:
            text += f"; {_count(len(report.failed), 'source')} failed"
        return Action("sweep", loan_id, text, report.as_dict(), (report.tx.tx_hash,))

    # ------------------------------------------------------------------------------------------------ the pass

    def run_pass(self) -> PassSummary:
        """Discover, then act on every due season and every loan account with something waiting."""
        latest_block = self.ctx.w3.eth.get_block("latest")
        latest, now = int(latest_block["number"]), int(latest_block["timestamp"])
        scanned_from = self.next_block
        self._discover(latest)
        actions: list[Action] = []
        # Seasons first: a payout to a loan's account is swept in the same pass.
        for season_id in sorted(self.seasons):
            actions += self._attempt("season", season_id, lambda s=season_id: self._season(s, now))
        for loan_id in sorted(self.loans):
            actions += self._attempt("loan", loan_id, lambda loan=loan_id: self._loan(loan))
        for action in actions:
            (log.info if action.ok else log.warning)("%s", action.text)
        return PassSummary(scanned_from, latest, len(self.seasons), len(self.loans), tuple(actions))

    @staticmethod
    def _attempt(what: str, target: int, act: Any) -> list[Action]:
        try:
            action = act()
        except (IotSettleError, Web3Exception, ValueError) as exc:
            # One bad item (a token whose views revert, a race lost) must not stop the others' payouts.
            kind = "finalize" if what == "season" else "sweep"
            return [Action(kind, target, f"{what} {target}: {exc}", error=str(exc))]
        return [action] if action is not None else []


def waiting(ctx: OpsContext, view: loan.LoanView) -> tuple[int, list[tuple[str, int]]]:
    """What a loan's payout account has to collect: (loan tokens in the account, [(source address, credit)] for
    the sources — DeliveryEscrow, CropInsurance — holding a credit for the account)."""
    credits = []
    for name in loan.DEFAULT_SOURCES:
        if not ctx.has(name):
            continue
        amount = int(ctx.contract(name).functions.withdrawable(view.token, view.account).call())
        if amount:
            credits.append((ctx.address(name), amount))
    return view.account_balance, credits


def _count(n: int, singular: str) -> str:
    return f"{n} {singular}" if n == 1 else f"{n} {singular}s"
