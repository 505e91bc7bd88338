"""`iotsettle device sign ...`: what a device does, from a shell: sign one event with its keystore and print the wire
payload, ready for `agreement settle -`, `escrow confirm -`, `policy settle -`, `crop record -` or MQTT."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import click
from iotsettle.cli._lazy import lazy_import
from iotsettle.cli._params import ADDRESS, ID, CommandContext, with_context
from iotsettle.oracle.chain.manifest import load_manifest
from iotsettle.oracle.protocol.location import location_bytes32

if TYPE_CHECKING:
    from iotsettle.oracle.chain import connection as chain_connection
    from iotsettle.oracle.device import fleet as device_fleet
    from iotsettle.oracle.device import keys as device_keys
    from iotsettle.oracle.device import signer as device_signer
    from iotsettle.oracle.protocol import wire
else:
    chain_connection = lazy_import("iotsettle.oracle.chain.connection")
    device_fleet = lazy_import("iotsettle.oracle.device.fleet")
    device_keys = lazy_import("iotsettle.oracle.device.keys")
    device_signer = lazy_import("iotsettle.oracle.device.signer")
    wire = lazy_import("iotsettle.oracle.protocol.wire")

#: the largest sequence number a device may sign (uint64)
MAX_SEQ = (1 << 64) - 1


class Hundredths(click.ParamType):
    """A decimal figure signed in hundredths of its unit: "9.1" (°C) → 910, "110.25" (mm) → 11025."""

    name = "DECIMAL"

    def __init__(self, *, signed: bool) -> None:
        self.signed = signed

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            hundredths = Decimal(str(value).strip()) * 100
        except InvalidOperation:
            self.fail(f"{value!r} is not a number", param, ctx)
        if hundredths != hundredths.to_integral_value():
            self.fail(f"{value!r} has more than two decimals", param, ctx)
        if hundredths < 0 and not self.signed:
            self.fail(f"{value!r} is negative", param, ctx)
        return int(hundredths)


class SignTime(click.ParamType):
    """When the event happened: "now" (this machine's clock), "chain" (the latest block's time) or a unix time."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text in ("now", "chain"):
            return text
        if not text.isdigit():
            self.fail(f"{value!r} is not a time: use now, chain or a unix timestamp", param, ctx)
        return int(text)


CELSIUS = Hundredths(signed=True)
MILLIMETRES = Hundredths(signed=False)
# Counters and registers: the signer refuses a figure beyond what a JSON payload carries (2^53 - 1) in one sentence.
COUNT = click.IntRange(0)


def _common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options every kind shares: the keystore, its password, seq, timestamp and the signing domain."""
    for option in reversed(
        [
            click.option(
                "--key",
                "key_file",
                required=True,
                type=click.Path(exists=True, dir_okay=False),
                envvar="IOTSETTLE_DEVICE_KEY",
                help="The device's keystore file.",
            ),
            click.option(
                "--password-file",
                type=click.Path(dir_okay=False),
                envvar="IOTSETTLE_DEVICE_PASSWORD_FILE",
                help="File holding the keystore password (else IOTSETTLE_DEVICE_PASSWORD).",
            ),
            click.option(
                "--seq",
                type=click.IntRange(1, MAX_SEQ),
                default=None,
                help="Sequence number (default: the next one of the keystore's counter, <keystore>.seq, which it "
                "then advances; an explicit --seq leaves the counter alone).",
            ),
            click.option(
                "--timestamp",
                type=SignTime(),
                default="now",
                show_default=True,
                help="When it happened: now, chain (the latest block's time, for a chain moved ahead) or a unix time.",
            ),
            click.option(
                "--chain-id",
                type=click.IntRange(1),
                default=None,
                help="Chain of the signing domain (default: [chain] chain_id, else the node's).",
            ),
            click.option(
                "--contract",
                type=ADDRESS,
                default=None,
                help="Verifying contract of the signing domain (default: this kind's contract in "
                "deployments/<chainId>.json).",
            ),
        ]
    ):
        func = option(func)
    return func


def _sign(
    cmd: CommandContext,
    options: dict[str, Any],
    make: Callable[[device_signer.EventSigner, int], wire.SignedEvent],
) -> None:
    """Load the key, resolve the signing domain, sign with the keystore's counter and print the payload line."""
    key_file = options["key_file"]
    key = device_keys.load_keystore(key_file, device_keys.resolve_password(options["password_file"]))
    chain: chain_connection.Chain | None = None

    def node() -> chain_connection.Chain:
        nonlocal chain
        if chain is None:
            chain = chain_connection.connect(cmd.config, cmd.rpc_url)
        return chain

    chain_id = options["chain_id"] or cmd.config.chain.chain_id or node().chain_id
    contract = options["contract"]
    if contract is not None:
        # Every domain is the one given: only this kind's is used.
        contracts = device_signer.Contracts.from_names(dict.fromkeys(device_signer.Contracts.names(), contract))
    else:
        contracts = device_fleet.contracts_from_manifest(load_manifest(cmd.config, chain_id))
    stamp = options["timestamp"]
    if stamp == "now":
        timestamp = int(time.time())
    elif stamp == "chain":
        timestamp = int(node().w3.eth.get_block("latest")["timestamp"])
    else:
        timestamp = int(stamp)
    counter: device_keys.SequenceCounter | device_keys.MemoryCounter = (
        device_keys.MemoryCounter(options["seq"])
        if options["seq"] is not None
        # One number per run: a block of reserved numbers would make every run skip the rest of its block.
        else device_keys.SequenceCounter(device_keys.sequence_path(key_file), key.address, block=1)
    )
    deliveries = device_keys.DeliveryLog(device_keys.deliveries_path(key_file), key.address)
    try:
        event = make(device_signer.EventSigner(key, chain_id, contracts, counter, deliveries), timestamp)
    finally:
        counter.close()
        deliveries.close()
    click.echo(event.to_payload().decode())


@click.group("sign")
def sign() -> None:
    """Sign one event with a device keystore and print its wire payload (one JSON line, docs/PROTOCOL.md).

    What the device's firmware does, from a shell: the line is what the oracle accepts over MQTT and what
    `agreement settle`, `escrow confirm`, `policy settle` and `crop record` relay by hand. The sequence number comes
    from the keystore's counter (<keystore>.seq) unless --seq names one; the password from IOTSETTLE_DEVICE_PASSWORD
    or --password-file.

    \b
    Examples (one per kind):
      iotsettle device sign reading --key keys/0xMETER.json --agreement 0xAGREEMENT --value 1520000
      iotsettle device sign delivery --key keys/0xTRACKER.json --escrow 1 --location u33dbfc --max-temperature 9.1
      iotsettle device sign telematics --key keys/0xVEHICLE.json --policy 0xPOLICY --odometer 1100000 \\
          --harsh-braking 0 --speeding 0
      iotsettle device sign weather --key keys/0xSTATION.json --rainfall 110 --max-temperature 31 --timestamp chain
    """


@sign.command("reading")
@click.option(
    "--agreement",
    "agreement_id",
    type=ID,
    required=True,
    help="The agreement it bills, on MeteredBilling or OptimisticBilling (the id says which).",
)
@click.option(
    "--value", type=COUNT, required=True, help="The meter's cumulative register (the contract bills the delta)."
)
@_common_options
@with_context(rpc=True, json_output=False)
def reading(cmd: CommandContext, agreement_id: int, value: int, **options: Any) -> None:
    """A meter's register reading for an agreement.

    The register is cumulative (a vehicle billed per km signs its odometer the same way). An agreement opened on
    OptimisticBilling (its id carries bit 63) is signed for that contract's domain; the oracle commits its readings.

    \b
    Example:
      iotsettle device sign reading --key keys/0xMETER.json --agreement 0xAGREEMENT --value 1520000 \\
          | iotsettle agreement settle -
    """
    _sign(cmd, options, lambda signer, ts: signer.reading(agreement_id, value, timestamp=ts))


@sign.command("delivery")
@click.option("--escrow", "escrow_id", type=ID, required=True, help="The DeliveryEscrow it releases.")
@click.option("--location", metavar="GEOHASH", required=True, help="Where the tracker is: a geohash (e.g. u33dbfc).")
@click.option(
    "--max-temperature",
    type=CELSIUS,
    required=True,
    help="The highest temperature on the way, in °C (two decimals at most).",
)
@_common_options
@with_context(rpc=True, json_output=False)
def delivery(cmd: CommandContext, escrow_id: int, location: str, max_temperature: int, **options: Any) -> None:
    """A tracker's arrival for an escrow (one per escrow).

    A tracker signs one delivery per escrow, ever: <keystore>.deliveries remembers it and refuses a second.

    \b
    Example:
      iotsettle device sign delivery --key keys/0xTRACKER.json --escrow 1 --location u33dbfc --max-temperature 9.1 \\
          | iotsettle escrow confirm -
    """
    place = location_bytes32(location)
    _sign(cmd, options, lambda signer, ts: signer.delivery(escrow_id, place, max_temperature, timestamp=ts))


@sign.command("telematics")
@click.option(
    "--policy",
    "policy_id",
    type=ID,
    required=True,
    help="The policy it prices, on MotorInsurance or OptimisticMotor (the id says which).",
)
@click.option("--odometer", type=COUNT, required=True, help="The vehicle's odometer in metres (cumulative).")
@click.option("--harsh-braking", type=COUNT, required=True, help="Harsh-braking events so far (cumulative).")
@click.option("--speeding", type=COUNT, required=True, help="Speeding episodes so far (cumulative).")
@_common_options
@with_context(rpc=True, json_output=False)
def telematics(
    cmd: CommandContext, policy_id: int, odometer: int, harsh_braking: int, speeding: int, **options: Any
) -> None:
    """A vehicle's report for a pay-per-km policy.

    The odometer and the behaviour counters are all cumulative.

    \b
    Example:
      iotsettle device sign telematics --key keys/0xVEHICLE.json --policy 0xPOLICY --odometer 1100000 \\
          --harsh-braking 0 --speeding 0 | iotsettle policy settle -
    """
    _sign(
        cmd,
        options,
        lambda signer, ts: signer.telematics(policy_id, odometer, harsh_braking, speeding, timestamp=ts),
    )


@sign.command("activity")
@click.option("--policy", "policy_id", type=ID, required=True, help="The HealthInsurance policy it prices.")
@click.option("--period", type=click.IntRange(0, 2**32 - 1), required=True, help="The finished period (0 = first).")
@click.option("--tier", type=click.IntRange(0, 3), required=True, help="The activity tier the period reached.")
@_common_options
@with_context(rpc=True, json_output=False)
def activity(cmd: CommandContext, policy_id: int, period: int, tier: int, **options: Any) -> None:
    """A wearable's activity summary of one finished period of a health policy: only the tier, never the data.

    \b
    Example:
      iotsettle device sign activity --key keys/0xWEARABLE.json --policy 0xPOLICY --period 0 --tier 2 \\
          --timestamp chain | iotsettle policy health settle -
    """
    _sign(cmd, options, lambda signer, ts: signer.activity(policy_id, period, tier, timestamp=ts))


@sign.command("weather")
@click.option("--rainfall", type=MILLIMETRES, required=True, help="The station's rain register in mm (cumulative).")
@click.option(
    "--max-temperature",
    type=CELSIUS,
    required=True,
    help="The highest temperature since the station's previous observation, in °C.",
)
@_common_options
@with_context(rpc=True, json_output=False)
def weather(cmd: CommandContext, rainfall: int, max_temperature: int, **options: Any) -> None:
    """A weather station's observation for crop cover.

    The station is the key's own address; the observation counts for every season the station serves.

    \b
    Example:
      iotsettle device sign weather --key keys/0xSTATION.json --rainfall 110 --max-temperature 31 \\
          --timestamp chain | iotsettle crop record -
    """
    _sign(cmd, options, lambda signer, ts: signer.weather(rainfall, max_temperature, timestamp=ts))
