"""`iotsettle oracle run --check`: everything the daemon needs, tried without starting it.

The start-up checks are the daemon's own (``service.preflight``: configuration, chain, deployment, relayer key),
then what the daemon would meet next: the broker (connect and subscribe with the daemon's settings under a client id
of its own, so a running daemon's session is left alone), the database folder, the health port, and the relayer's
funds. Findings name endpoints without their path, query or user info (API keys live there) and never a secret.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from iotsettle.oracle.chain.signer import RemoteSigner
from iotsettle.oracle.config import Config, endpoint
from iotsettle.oracle.daemon.deployment import Deployment
from iotsettle.oracle.daemon.health import State
from iotsettle.oracle.daemon.intake.transport import Transport
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.service import intake_settings, preflight, relayer_funds
from iotsettle.oracle.daemon.store import Store
from iotsettle.oracle.protocol.errors import (
    ChainError,
    CompileError,
    ConfigError,
    DeploymentError,
    IotSettleError,
    KeyFileError,
    SignerError,
)


class Verdict(StrEnum):
    OK = "ok"
    WARN = "warn"  # the daemon starts, but an operator should act (low funds)
    FAIL = "fail"  # the daemon would refuse to start or could not work


@dataclass(frozen=True)
class Finding:
    name: str
    verdict: Verdict
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": str(self.verdict), "detail": self.detail}


#: which part of the set-up a preflight error is about
_PART_OF_ERROR: tuple[tuple[type[IotSettleError], str], ...] = (
    (ConfigError, "configuration"),
    (ChainError, "chain"),
    (KeyFileError, "relayer key"),
    (DeploymentError, "deployment"),
    (CompileError, "deployment"),
)


def scrub(text: str, config: Config) -> str:
    """``text`` with the RPC URL cut to its endpoint and every configured secret replaced by ``***``: errors of
    the layers below quote what they were given."""
    for url in (*config.chain.endpoints, config.chain.signer_url):
        if url and url != endpoint(url):
            text = text.replace(url, endpoint(url))
    for secret in (config.chain.password, config.chain.private_key, config.mqtt.password):
        if secret:
            text = text.replace(secret, "***")
    return text


def _signer_finding(signer: RemoteSigner) -> Finding:
    """Whether the remote signer answers and lists the relayer (a warning only: Clef may ask its operator first)."""
    try:
        listed = signer.lists_account()
    except SignerError as exc:
        return Finding("signer", Verdict.FAIL, str(exc))
    if listed:
        return Finding("signer", Verdict.OK, f"{signer.where} lists {signer.address}")
    return Finding("signer", Verdict.WARN, f"{signer.where} answers but does not list {signer.address} (approval?)")


def _key_source(config: Config) -> str:
    if config.chain.signer == "remote":
        return f"the remote signer at {endpoint(config.chain.signer_url)}"
    if config.chain.keystore:
        return f"keystore {config.chain.keystore}"
    if config.chain.private_key:
        return "[chain] private_key (IOTSETTLE_CHAIN_PRIVATE_KEY)"
    return "the anvil development account of a local chain"


def check_broker(config: Config, deployment: Deployment, timeout: float = 5.0) -> str:
    """Connect and subscribe as the daemon would (its user, subscription filter; no shared group, a session that ends
    at disconnect); raises ConfigError saying why not."""
    host, port = config.mqtt.host, config.mqtt.port
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"broker {host}:{port}: {exc.strerror or exc}") from None
    settings = dataclasses.replace(
        intake_settings(config, deployment),
        client_id=f"{config.oracle.client_id}-check",
        shared_group="",  # a plain subscription gets copies: joining the group would take events from the daemon
        route_group="",  # the probe is no instance: it must not take devices from the group
        session_expiry_s=0,
        receive_maximum=1,
        status_topic="",
    )
    transport = Transport(settings.broker, lambda message: None, Metrics(config.oracle.oracle_id))
    refused: list[str] = []
    answered = threading.Event()

    def connected(client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            refused.append(str(reason_code))
            answered.set()
        transport._on_connect(client, userdata, flags, reason_code, properties)

    transport.client.on_connect = connected
    transport.start()
    subscribed = False
    try:
        deadline = time.monotonic() + timeout
        while not subscribed and not answered.is_set() and time.monotonic() < deadline:
            subscribed = transport.wait_connected(0.05)
    finally:
        transport.stopping()
        transport.close()
    user = f" as {config.mqtt.username}" if config.mqtt.username else ""
    if refused:
        raise ConfigError(f"broker {host}:{port} refused the connection{user}: {refused[0]}")
    if not subscribed:
        raise ConfigError(f"broker {host}:{port} did not accept the subscription {settings.subscription}{user}")
    return f"{host}:{port}{user}: connected and subscribed to {settings.subscription}"


def _writable(path: Path) -> Path | None:
    """The nearest existing folder of ``path`` when the daemon cannot create or write the database there."""
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    return None if os.access(folder, os.W_OK | os.X_OK) else folder


def _health_port(config: Config) -> Finding:
    o = config.oracle
    if not o.health_port:
        return Finding("health endpoint", Verdict.WARN, "disabled ([oracle] health_port = 0): no /health or /metrics")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the health server: TIME_WAIT is no obstacle
        try:
            sock.bind((o.health_host, o.health_port))
        except OSError as exc:
            return Finding(
                "health endpoint",
                Verdict.FAIL,
                f"cannot listen on {o.health_host}:{o.health_port}: {exc.strerror} (a daemon already running?)",
            )
    return Finding("health endpoint", Verdict.OK, f"http://{o.health_host}:{o.health_port}/health and /metrics")


def run_checks(config: Config, broker_timeout: float = 5.0) -> list[Finding]:
    """Every check, in the order the daemon meets them; a failed preflight skips what needs the chain."""
    findings: list[Finding] = []
    deployment: Deployment | None = None
    try:
        deployment = preflight(config)
    except IotSettleError as exc:
        part = next((name for kind, name in _PART_OF_ERROR if isinstance(exc, kind)), "start-up")
        findings.append(Finding(part, Verdict.FAIL, str(exc)))
    if deployment is not None:
        chain = deployment.chain
        findings += [
            Finding("configuration", Verdict.OK, f"from {config.source}"),
            Finding("chain", Verdict.OK, f"chain {chain.chain_id} at {endpoint(chain.rpc_url)}"),
            Finding(
                "deployment",
                Verdict.OK,
                f"{len(deployment.manifest['contracts'])} contracts verified on chain; relaying "
                + ", ".join(sorted(deployment.contracts)),
            ),
            Finding("relayer key", Verdict.OK, f"{deployment.relayer.address} from {_key_source(config)}"),
        ]
        if deployment.lanes:
            findings.append(
                Finding(
                    "relayer lanes",
                    Verdict.OK,
                    f"{len(deployment.relayers)} nonce lanes: "
                    + ", ".join(relayer.address for relayer in deployment.relayers),
                )
            )
        if isinstance(deployment.relayer, RemoteSigner):
            findings.append(_signer_finding(deployment.relayer))
        try:
            findings.append(Finding("broker", Verdict.OK, check_broker(config, deployment, broker_timeout)))
        except IotSettleError as exc:
            findings.append(Finding("broker", Verdict.FAIL, str(exc)))

    db = config.path(config.oracle.db_path)
    blocked = _writable(db)
    if blocked is not None:
        findings.append(Finding("database", Verdict.FAIL, f"{db}: folder {blocked} is not writable by this user"))
    else:
        findings.append(Finding("database", Verdict.OK, f"{db} ({'exists' if db.exists() else 'created at start'})"))
    findings.append(_health_port(config))

    if deployment is not None:
        store = Store.open(db) if db.exists() else None
        try:
            funds = relayer_funds(config, deployment, store)
            state, detail = funds.check()
        finally:
            if store is not None:
                store.close()
        empty = [lane.address for lane in funds.lanes.values() if lane.balance() == 0]
        if empty:
            findings.append(
                Finding("funds", Verdict.FAIL, f"relayer {', '.join(empty)} holds 0 ETH: it cannot pay gas")
            )
        else:
            findings.append(Finding("funds", Verdict.OK if state is State.OK else Verdict.WARN, detail))
    return [dataclasses.replace(f, detail=scrub(f.detail, config)) for f in findings]
