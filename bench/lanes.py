"""Events paid per second with 1, 2 and 4 relayer keys (nonce lanes, ``[oracle] relayer_private_keys``) in one run.

Each measurement stores one signed reading per meter (every one for a different agreement, so none is collapsed)
and drains them through a fresh ``Settler`` of the daemon with that many lanes (``settle_profile``'s drain): the
time from the first batch to the last receipt. Two chain modes, on the same anvil one after the other:

- ``automine``: every transaction is mined as it arrives. Sending is the submit thread's serial work and a batch
  never waits for a block, so extra lanes can hardly help; the figure shows what they cost.
- ``block_time_1s`` (``evm_setIntervalMining 1``): a transaction waits for the next block and each lane holds at
  most ``max_in_flight`` of them, so one lane settles ``max_in_flight × batch_max_events`` events per block and each
  added lane adds as much, until the block gas limit or the submit thread is the limit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from bench.settle_profile import _drain
from bench.stack import BenchStack, Meter

log = logging.getLogger(__name__)

KEYS = (1, 2, 4)


def _mode(stack: BenchStack, interval: int) -> None:
    """Interval mining every ``interval`` s, or automine again with 0."""
    w3 = stack.chain.w3
    if interval:
        w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
        w3.provider.make_request("evm_setIntervalMining", [interval])  # type: ignore[arg-type]
    else:
        w3.provider.make_request("evm_setIntervalMining", [0])  # type: ignore[arg-type]
        w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]


def measure_lanes(
    stack: BenchStack,
    meters: Sequence[Meter],
    modes: dict[str, dict[str, Any]],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """``{mode: {"keys": {n: events/s}, ...}}`` for every mode of ``modes`` (name → ``interval`` s and the
    ``[oracle]`` settings of the settler) and 1, 2, 4 keys."""
    relayers = ["0x" + bytes(stack.fund_relayer().key).hex() for _ in range(max(KEYS))]
    result: dict[str, Any] = {}
    for name, mode in modes.items():
        oracle = {"batch_max_wait": 0.0, **mode["oracle"]}
        rates: dict[str, float] = {}
        _mode(stack, mode["interval"])
        try:
            for keys in KEYS:
                config = stack.config.replace("chain", private_key=relayers[0]).replace(
                    "oracle", relayer_private_keys=tuple(relayers[1:keys]), **oracle
                )
                _cpu, wall = _drain(stack, config, list(meters), None)
                rates[str(keys)] = round(len(meters) / wall, 1)
                say(f"   {name}: {keys} key(s) → {rates[str(keys)]:,.0f} events/s ({len(meters)} readings)")
        finally:
            _mode(stack, 0)
        result[name] = {"events": len(meters), "oracle": oracle, "keys": rates}
    return result
