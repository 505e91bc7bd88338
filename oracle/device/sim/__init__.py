"""A fleet of simulated devices that sign realistic events and publish them over MQTT at a chosen rate.

``models`` makes each device's registers evolve, ``faults`` picks the devices that misbehave and builds their bad
events, ``plan`` signs the events in publishing order, and ``run`` publishes them and counts the oracle's replies.
"""

from iotsettle.oracle.device.sim.faults import EXPECTED_REASON, InjectedFault
from iotsettle.oracle.device.sim.models import STYLE_RATES, VehicleModel, WeatherScenario, driving_style
from iotsettle.oracle.device.sim.plan import EventPlan, PlannedEvent, plan_events, sign_ahead
from iotsettle.oracle.device.sim.run import ProgressReport, SimulationResult, run_simulation

__all__ = [
    "EXPECTED_REASON",
    "STYLE_RATES",
    "EventPlan",
    "InjectedFault",
    "PlannedEvent",
    "ProgressReport",
    "SimulationResult",
    "VehicleModel",
    "WeatherScenario",
    "driving_style",
    "plan_events",
    "run_simulation",
    "sign_ahead",
]
