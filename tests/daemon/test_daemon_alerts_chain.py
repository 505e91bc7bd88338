"""The daemon as operators run it (a real process) against anvil + mosquitto: a vehicle that keeps driving after its
policy lapsed on chain raises ``lapsed_driving`` — on the alerts topic, in /metrics, in the store and in
`iotsettle oracle alerts` — while its reports are still taken in and settled as ever."""

from __future__ import annotations

import json
import queue
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from click.testing import CliRunner
from iotsettle.cli._common import State
from iotsettle.cli.oracle import oracle
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.wire import alerts_topic
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.wait import wait_for

from tests.kit.cli import Cli, register_device
from tests.kit.daemon import DaemonProcess
from tests.kit.devices import Device


def test_driving_on_a_lapsed_policy_is_alerted_end_to_end(
    tmp_path: Path, deployment: Any, mosquitto: Any, w3: Any, daemons: list[DaemonProcess]
) -> None:
    cli = Cli(deployment.config)
    insurer, holder = cli.user(w3), cli.user(w3)
    key = register_device(deployment.config, holder, DeviceKind.VEHICLE)
    offered = cli.ok(
        ["policy", "offer", "--holder", holder.address, "--vehicle", key.address, "--rate", "0.05",
         "--min-factor", "0.9", "--max-factor", "1.5", "--step", "0.1", "--start-odometer", "1000000"],
        insurer,
    )  # fmt: skip
    policy = int(offered["policyId"])
    cli.ok(["token", "mint", "--amount", "20"], holder)
    cli.ok(["policy", "accept", hex(policy), "--deposit", "20"], holder)
    motor = deployment.address("MotorInsurance")
    vehicle = Device(DeviceKind.VEHICLE, key.private_key, contracts={"telematics": motor})

    daemon = DaemonProcess(tmp_path, deployment, mosquitto, IOTSETTLE_ALERTS_POLICY_POLL="0.2")
    daemons.append(daemon)
    daemon.start().wait_ready()
    alerts: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ops-{uuid.uuid4().hex[:8]}")
    listener.on_connect = lambda c, *_: c.subscribe(alerts_topic(w3.eth.chain_id), qos=1)
    listener.on_message = lambda c, u, m: alerts.put(json.loads(m.payload))
    listener.connect(mosquitto.host, mosquitto.port)
    listener.loop_start()
    publisher = Publisher(mosquitto.host, mosquitto.port, w3.eth.chain_id)
    try:
        start = int(w3.eth.get_block("latest")["timestamp"]) + 1  # not before the policy's acceptance
        # 500.5 km at ×0.90 cost 22.5 TEST: the 20 deposited run out, the policy lapses when this report settles
        publisher.publish(vehicle.topic, vehicle.telematics(1, 1_500_500, policy=policy, timestamp=start))
        wait_for(lambda: cli.ok(["policy", "show", hex(policy)])["status"] == "lapsed", 30, "the policy to lapse")
        assert alerts.empty(), "driving before the lapse is no alert"

        # it keeps driving, 500 m a report; the daemon learns of the lapse at its next policy poll
        seq = 1

        def drive_on() -> bool:
            nonlocal seq
            seq += 1
            report = vehicle.telematics(seq, 1_500_000 + 500 * seq, policy=policy, timestamp=start + 10 * seq)
            publisher.publish(vehicle.topic, report)
            time.sleep(0.3)
            return not alerts.empty()

        wait_for(drive_on, 20, "a lapsed_driving alert")
        alert = alerts.get()
        assert (alert["alert"], alert["device"], alert["target"]) == ("lapsed_driving", key.address, str(policy))
        assert alert["value"] == 500 and alert["seq"] == seq
        # every report was still taken in and stored for settlement (the contract answers the lapsed ones itself)
        wait_for(lambda: daemon.stored() == seq, 10, f"{seq} stored reports")
        assert daemon.metric('iotsettle_oracle_alerts_total{kind="lapsed_driving"}') == 1
        drive_on()  # once per lapse
        assert alerts.empty()
    finally:
        publisher.close()
        listener.loop_stop()
        listener.disconnect()

    env = {k: v for k, v in daemon.env.items() if k.startswith("IOTSETTLE_")}
    result = CliRunner().invoke(oracle, ["alerts", "--json"], env=env, obj=State(None))
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [(a["alert"], a["seq"], a["id"]) for a in listed] == [("lapsed_driving", alert["seq"], alert["id"])]
    human = CliRunner().invoke(oracle, ["alerts", "--kind", "lapsed_driving"], env=env, obj=State(None))
    assert human.exit_code == 0, human.output
    shown = " ".join(human.output.split())  # rich wraps long lines
    assert f"lapsed_driving {key.address} telematics seq {alert['seq']}" in shown and f"policy {hex(policy)}" in shown
