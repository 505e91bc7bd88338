"""The weather a simulated fleet's honest stations report: a name for `device simulate --weather` and the demo.

Its own module, free of the SDK's keys and signing, because the CLI lists the choices in --help, which imports no
web3 or eth_account (``sim.models`` gives each scenario its climate).
"""

from __future__ import annotations

from enum import StrEnum


class WeatherScenario(StrEnum):
    """The weather the honest stations of a run report."""

    NORMAL = "normal"
    DROUGHT = "drought"
    HEATWAVE = "heatwave"
