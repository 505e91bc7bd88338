"""Connecting a paho client to a list of brokers: TLS (mutual when a client certificate is given) and failover.

``Failover`` points a paho 2.x client at the first broker and moves it to the next one, in order and round the
list, whenever a connection attempt fails (TCP refused, TLS handshake failed, CONNACK refused, or the broker
closed the connection before accepting it). A connection that was accepted and then dropped is first retried on
the same broker: paho's own reconnect loop does that, with its back-off, and a failure there moves on. paho
reads ``host``/``port`` and its TLS context at each reconnect, so switching brokers is setting them before the
next attempt (paho 2.2.0, pinned: its ``_ssl``/``_ssl_context``/``_tls_insecure`` are set directly because its
public ``tls_set_context`` cannot be undone for a plain broker later in the list).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from iotsettle.oracle.config import BrokerEndpoint, BrokerTls
from iotsettle.oracle.protocol.errors import ConfigError

log = logging.getLogger(__name__)


def tls_context(tls: BrokerTls) -> ssl.SSLContext:
    """An SSL context that checks the broker's certificate against ``tls.ca_file`` (else the system CAs) and its
    host name (unless ``check_hostname`` is off), presenting the client certificate when one is configured."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"[mqtt] tls_ca_file {tls.ca_file}: cannot be read as PEM certificates ({_why(exc)})"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = tls.check_hostname
    if tls.cert_file:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"[mqtt] tls_cert_file {tls.cert_file} / tls_key_file {tls.key_file or '(in the certificate file)'}: "
                f"cannot be loaded as a certificate and its key ({_why(exc)})"
            ) from None
    return context


def _why(exc: BaseException) -> str:
    """The reason of a file/SSL error without echoing any file content."""
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or "invalid PEM")
    return exc.strerror or type(exc).__name__ if isinstance(exc, OSError) else type(exc).__name__


class Failover:
    """Keeps ``client`` pointed at one of ``endpoints`` and moves on after a failed attempt.

    Wire it: ``connected()`` from ``on_connect`` when the broker accepted, ``disconnected()`` from
    ``on_disconnect``; ``on_connect_fail`` is installed here. All three run on paho's network thread.
    """

    def __init__(self, client: mqtt.Client, endpoints: Sequence[BrokerEndpoint], tls: BrokerTls, name: str) -> None:
        if not endpoints:
            raise ConfigError("no MQTT broker configured: set [mqtt] brokers (or host and port)")
        self.endpoints = tuple(endpoints)
        self._client = client
        self._name = name
        self._context = tls_context(tls) if any(e.tls for e in self.endpoints) else None
        self._insecure = not tls.check_hostname
        self._lock = threading.Lock()
        self._index = 0
        self._accepted = False  # the current broker accepted a connection since the client was pointed at it
        client.on_connect_fail = self._connect_failed
        self._point()

    @property
    def current(self) -> BrokerEndpoint:
        return self.endpoints[self._index]

    def connected(self) -> None:
        self._accepted = True

    def disconnected(self) -> None:
        """After a connection that the broker never accepted (handshake or CONNACK refused): the next broker."""
        if not self._accepted:
            self._advance("it closed the connection before accepting it")
        self._accepted = False

    def _connect_failed(self, _client: mqtt.Client, _userdata: Any) -> None:
        self._advance("the connection failed")

    def _advance(self, why: str) -> None:
        with self._lock:
            if len(self.endpoints) == 1:
                return
            failed = self.current
            self._index = (self._index + 1) % len(self.endpoints)
            self._point()
        log.warning("%s: broker %s not usable (%s); trying %s next", self._name, failed, why, self.current)

    def _point(self) -> None:
        endpoint, client = self.current, self._client
        client._host = endpoint.host
        client._port = endpoint.port
        client._ssl = endpoint.tls
        client._ssl_context = self._context if endpoint.tls else None
        client._tls_insecure = self._insecure
