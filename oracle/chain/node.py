"""The local stack: anvil and mosquitto as managed background processes on loopback.

Each service keeps ``<state_dir>/<name>.pid`` and ``<state_dir>/<name>.log``; mosquitto also its config and
persistence folder. ``up`` is idempotent (a running, ready service is left alone), ``down`` stops what it
started (SIGTERM, then SIGKILL after a grace period). The same code starts the services for the test suite.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from iotsettle.oracle.chain.tls import LocalCa
from iotsettle.oracle.config import Config
from iotsettle.oracle.protocol.errors import NodeError, ToolchainError

log = logging.getLogger(__name__)

ANVIL_CHAIN_ID = 31337
GANACHE_CHAIN_ID = 1337
READY_TIMEOUT = 20.0
DEFAULT_MQTT_TLS_PORT = 8883  # the TLS port of `node up --tls` and `demo --tls` when [node] mqtt_tls_port is 0


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    ready: bool
    pid: int | None
    endpoint: str
    log_file: str

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "running": self.running,
            "ready": self.ready,
            "pid": self.pid,
            "endpoint": self.endpoint,
            "log": self.log_file,
        }


def find_binary(config: Config, name: str) -> str:
    """A managed service's binary: the project's node_modules/.bin, then PATH, then /usr/sbin (Debian's mosquitto)."""
    local = config.root / "node_modules" / ".bin" / name
    if local.exists():
        return str(local)
    found = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if found:
        return found
    raise ToolchainError(
        f"{name} is not installed; run scripts/setup (it installs anvil/ganache from npm and mosquitto from apt)"
    )


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (for tests and ad-hoc stacks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this very process still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def rpc_ready(url: str, timeout: float = 1.0) -> int | None:
    """The chain id answered by a JSON-RPC endpoint, or None if it does not answer."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(json.loads(response.read())["result"], 16)
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return None


def mqtt_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if an MQTT broker answers a CONNECT with CONNACK (not only an open TCP port)."""
    connect = bytes([0x10, 0x12, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x0A, 0x00, 0x06]) + b"iotrdy"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(connect)
            answer = sock.recv(4)
            return len(answer) == 4 and answer[0] == 0x20 and answer[3] == 0x00
    except OSError:
        return False


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections on ``host:port`` (a TLS listener that wants a certificate)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Service:
    """One managed background process with a pid file and a log file in the state folder."""

    name: str = ""

    def __init__(self, config: Config, state_dir: Path | None = None) -> None:
        self.config = config
        self.host = config.node.host
        self.state_dir = state_dir or config.path(config.node.state_dir)

    @property
    def port(self) -> int:
        raise NotImplementedError

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def status(self) -> ServiceStatus:
        pid = self.pid()
        return ServiceStatus(
            self.name, pid is not None, pid is not None and self.ready(), pid, self.endpoint, str(self.log_file)
        )

    def start(self) -> ServiceStatus:
        current = self.status()
        if current.running:
            if not current.ready:
                self._wait_ready(current.pid)
            return self.status()
        if not port_free(self.host, self.port):
            raise NodeError(
                f"port {self.port} on {self.host} is taken, so {self.name} cannot start; stop what holds it "
                f"or choose another port (IOTSETTLE_NODE_{'ANVIL' if self.name == 'anvil' else 'MQTT'}_PORT)"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        command = self.command()
        with open(self.log_file, "ab") as log_handle:
            process = subprocess.Popen(
                command, stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.pid_file.write_text(f"{process.pid}\n")
        log.info("started %s (pid %d): %s", self.name, process.pid, " ".join(command))
        self._wait_ready(process.pid)
        return self.status()

    def _wait_ready(self, pid: int | None) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.ready():
                return
            if pid is None or not _pid_alive(pid):
                tail = self._log_tail()
                raise NodeError(f"{self.name} exited during start-up; last log line: {tail or '(empty)'}")
            time.sleep(0.1)
        raise NodeError(
            f"{self.name} did not become ready on {self.endpoint} within {READY_TIMEOUT:.0f} s; see {self.log_file}"
        )

    def _log_tail(self) -> str:
        try:
            lines = [line for line in self.log_file.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

    def stop(self, grace: float = 5.0) -> bool:
        """Stop the service if it runs; returns whether something was stopped."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.05)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while _pid_alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        log.info("stopped %s (pid %d)", self.name, pid)
        return True

    def kill(self) -> None:
        """SIGKILL without a grace period (crash tests)."""
        pid = self.pid()
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)
            while _pid_alive(pid):
                time.sleep(0.02)


class Anvil(Service):
    name = "anvil"

    def __init__(
        self, config: Config, state_dir: Path | None = None, port: int | None = None, chain_id: int = ANVIL_CHAIN_ID
    ) -> None:
        super().__init__(config, state_dir)
        self._port = port or config.node.anvil_port
        self.chain_id = chain_id

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        command = [
            find_binary(self.config, "anvil"),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--chain-id",
            str(self.chain_id),
            "--silent",
        ]
        if self.config.node.block_time:
            command += ["--block-time", str(self.config.node.block_time)]
        return command

    def ready(self) -> bool:
        return rpc_ready(self.endpoint) == self.chain_id


class Mosquitto(Service):
    """The managed broker: plain MQTT on ``port``; with a ``tls_port`` also mutual TLS there, with certificates of
    a throw-away CA kept in ``<state_dir>/tls`` (``LocalCa``). On the TLS port a client must present a
    certificate of that CA, and its common name becomes its MQTT user name."""

    name = "mosquitto"

    def __init__(
        self, config: Config, state_dir: Path | None = None, port: int | None = None, tls_port: int | None = None
    ) -> None:
        super().__init__(config, state_dir)
        self._port = port or config.node.mqtt_port
        self.tls_port = config.node.mqtt_tls_port if tls_port is None else tls_port

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        plain = f"mqtt://{self.host}:{self.port}"
        return f"{plain} {self.tls_endpoint}" if self.tls_port else plain

    @property
    def tls_endpoint(self) -> str:
        return f"mqtts://{self.host}:{self.tls_port}" if self.tls_port else ""

    @property
    def config_file(self) -> Path:
        return self.state_dir / "mosquitto.conf"

    @property
    def ca(self) -> LocalCa:
        """The throw-away CA of the TLS port (``ca.ensure()`` creates it; ``ca.client(name)`` issues certificates)."""
        return LocalCa(self.state_dir / "tls")

    def command(self) -> list[str]:
        binary = find_binary(self.config, "mosquitto")
        data = self.state_dir / "mosquitto-data"
        data.mkdir(parents=True, exist_ok=True)
        tls = ""
        if self.tls_port:
            ca = self.ca
            ca.ensure()
            tls = (
                f"listener {self.tls_port} {self.host}\n"
                f"cafile {ca.ca_file}\ncertfile {ca.server.cert_file}\nkeyfile {ca.server.key_file}\n"
                "require_certificate true\nuse_identity_as_username true\n"
            )
        # Persistence keeps QoS 1 sessions and queued messages across a graceful broker restart.
        self.config_file.write_text(
            f"listener {self.port} {self.host}\n" + tls + "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {data}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 0\n" + ("user root\n" if os.geteuid() == 0 else "") + "log_dest stdout\n"
            # As root, mosquitto would switch to the 'mosquitto' user and lose access to the state folder.
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        return [binary, "-c", str(self.config_file)]

    def ready(self) -> bool:
        return mqtt_ready(self.host, self.port) and (not self.tls_port or port_open(self.host, self.tls_port))


def with_tls_port(config: Config) -> Config:
    """``config`` with the managed broker's TLS port open: ``[node] mqtt_tls_port``, else the default 8883."""
    return config if config.node.mqtt_tls_port else config.replace("node", mqtt_tls_port=DEFAULT_MQTT_TLS_PORT)


class Aedes(Service):
    """A second MQTT broker, aedes from npm (``scripts/aedes-broker.mjs``), for checking that nothing depends on
    mosquitto's behaviour. Its sessions and queued messages are in memory: they survive a client's reconnect, not a
    restart of the broker (docs/BROKERS.md lists the differences)."""

    name = "aedes"

    def __init__(self, config: Config, state_dir: Path | None = None, port: int | None = None) -> None:
        super().__init__(config, state_dir)
        self._port = port or config.node.mqtt_port

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def command(self) -> list[str]:
        script = self.config.root / "scripts" / "aedes-broker.mjs"
        if not (self.config.root / "node_modules" / "aedes").is_dir():
            raise ToolchainError("aedes is not installed; run scripts/setup (it installs the npm toolchain)")
        node = shutil.which("node")
        if node is None:
            raise ToolchainError("node is not installed; aedes runs on Node.js 18+")
        return [node, str(script), str(self.port), self.host]

    def ready(self) -> bool:
        return mqtt_ready(self.host, self.port)


def stack(config: Config) -> list[Service]:
    return [Anvil(config), Mosquitto(config)]
