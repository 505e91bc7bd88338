"""Token amounts on the command line: one rule for every command.

An amount is a number of whole tokens, scaled by the token's decimals: ``1.5`` of an 18-decimal token is
1500000000000000000 base units. To give base units exactly, append ``wei`` (the smallest unit of any token,
as cast names it): ``1500wei``. Digits may be grouped with ``_``. Negative amounts, more fractional digits than
the token has, and anything else are refused. ``TokenInfo`` is a token as amounts are written in it: ``ETH`` (the
zero address), ``TEST`` or an ERC-20, with its symbol and decimals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext

from iotsettle.oracle.protocol.errors import IotSettleError

_AMOUNT = re.compile(r"^(?P<number>[0-9][0-9_]*(\.[0-9_]*)?|\.[0-9][0-9_]*)(?P<wei>wei)?$")
UINT256_MAX = (1 << 256) - 1


class AmountError(IotSettleError, ValueError):
    """An amount that does not follow the rule above (bad syntax, too many decimals, out of range)."""


@dataclass(frozen=True)
class Amount:
    """An amount as typed: whole tokens (``tokens``) or exact base units (``base``); exactly one is set."""

    text: str
    tokens: Decimal | None = None
    base: int | None = None

    def to_base(self, decimals: int, symbol: str = "") -> int:
        """Base units for a token with ``decimals``; raises AmountError if the amount cannot be represented."""
        if self.base is not None:
            return self.base
        assert self.tokens is not None  # guaranteed by parse_amount
        with localcontext() as ctx:
            ctx.prec = 200
            scaled = self.tokens.scaleb(decimals)
            if scaled != scaled.to_integral_value():
                unit = f" {symbol}" if symbol else ""
                raise AmountError(f"{self.text}{unit} has more than {decimals} decimals; give base units as <n>wei")
            value = int(scaled)
        if value > UINT256_MAX:
            raise AmountError(f"{self.text} is too large for a uint256")
        return value


def parse_amount(text: str) -> Amount:
    """Parse an amount per the module rule; raises AmountError naming the problem."""
    cleaned = text.strip()
    match = _AMOUNT.match(cleaned)
    if match is None:
        if cleaned.startswith("-"):
            raise AmountError(f"{text!r} is negative; amounts are zero or more")
        raise AmountError(f"{text!r} is not an amount (examples: 1.5 for 1.5 tokens, 1500wei for base units)")
    number = match.group("number").replace("_", "")
    if match.group("wei"):
        if "." in number:
            raise AmountError(f"{text!r}: base units (wei) are whole numbers")
        value = int(number)
        if value > UINT256_MAX:
            raise AmountError(f"{text!r} is too large for a uint256")
        return Amount(cleaned, base=value)
    try:
        return Amount(cleaned, tokens=Decimal(number))
    except InvalidOperation:
        raise AmountError(f"{text!r} is not an amount") from None


def format_amount(base: int, decimals: int, symbol: str = "", max_decimals: int | None = None) -> str:
    """``1500000000000000000`` with 18 decimals → ``1.5``; trailing zeros dropped, symbol appended if given.

    ``max_decimals`` rounds down for display (a ``~`` marks a rounded value); exact by default.
    """
    sign = "-" if base < 0 else ""
    whole, frac = divmod(abs(base), 10**decimals) if decimals else (abs(base), 0)
    text = f"{sign}{whole:,}"
    digits = str(frac).rjust(decimals, "0") if frac else ""
    if max_decimals is not None and len(digits.rstrip("0")) > max_decimals:
        sign_text = "~" + text
        digits = digits[:max_decimals]
        text = sign_text
    if digits.rstrip("0"):
        text += "." + digits.rstrip("0")
    return f"{text} {symbol}" if symbol else text


ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
ETH = "ETH"
TEST = "TEST"


@dataclass(frozen=True)
class TokenInfo:
    """A token as amounts are written in it: its address, symbol and decimals (``token_info.describe_token``)."""

    address: str  # ZERO_ADDRESS for ETH
    symbol: str
    decimals: int

    @property
    def is_eth(self) -> bool:
        return self.address == ZERO_ADDRESS

    def format(self, base: int) -> str:
        return format_amount(base, self.decimals, self.symbol)

    def format_short(self, base: int) -> str:
        """For tables: at most 4 decimals, ``~`` when rounded."""
        return format_amount(base, self.decimals, self.symbol, max_decimals=4)

    def to_base(self, amount: Amount) -> int:
        return amount.to_base(self.decimals, self.symbol)
